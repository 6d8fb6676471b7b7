"""fashion-mnist-mini: a fixed, stratified subset of the real Fashion-MNIST shipped inside the package.

It lets the demo, the tests and a notebook use real look-alike classes (shirt / T-shirt / pullover /
coat) with no download. The files are the original IDX format (gzipped), so the reader is the one
Fashion-MNIST uses; each file's SHA-256 is checked before it is read, so a damaged install is one
line. `scripts/fashion_mnist_mini.py` rebuilds the files from the full set (bit for bit) and holds
the measurement that chose their size (docs/results.md). Licence and citation: the folder's README.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import idx

NAME = "fashion-mnist-mini"
FOLDER = Path(__file__).with_name("fashion_mnist_mini")
# images per class in each split (docs/results.md says how the size was chosen)
PER_CLASS = {"train": 100, "test": 200}
SELECTION_SEED = 0
IMAGES_SEEN = 24_000  # the demo trains each model on this many images (epochs x training images)
SHA256 = {  # file name -> SHA-256 of the shipped bytes, as scripts/fashion_mnist_mini.py build prints them
    "train-images-idx3-ubyte.gz": "d754f357adafad851fe2cd4b04a04c9c7e32619cbeb399c0d9c0a188b249a334",
    "train-labels-idx1-ubyte.gz": "56a7c1f4bf302dd1232d2f1271a801a7795adbd97cb5a585415d654b0ae1fa08",
    "t10k-images-idx3-ubyte.gz": "db94bf06bc48b020d03bc702944f032291a1e9f57bd2c3b0d44fee1f8f22037a",
    "t10k-labels-idx1-ubyte.gz": "ce778a750e16d3a430150e4f1ee80f46f5aed0058c16a709f475fbc807d5d392",
}


def describe() -> str:
    counts = " and ".join(f"{10 * n:,} {split}" for split, n in PER_CLASS.items())
    return f"{counts} images, balanced over its 10 classes"


def select(labels: np.ndarray, per_class: int, seed: int = SELECTION_SEED) -> np.ndarray:
    """Indices of `per_class` images of each class, the first ones of a seeded permutation (so a smaller
    subset is contained in a larger one), in class-interleaved order of that permutation."""
    order = np.random.default_rng(seed).permutation(len(labels))
    rank = np.zeros(len(labels), np.int64)
    for label in np.unique(labels):
        members = order[labels[order] == label]
        if len(members) < per_class:
            raise UserError(f"class {label} has {len(members)} images, fewer than {per_class}")
        rank[members] = np.arange(len(members))
    return order[rank[order] < per_class]


def idx_bytes(array: np.ndarray) -> bytes:
    """An uint8 array as a gzipped IDX file, byte-identical on every run (no time in the gzip header)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0, filename="") as file:
        file.write(header + array.tobytes())
    return out.getvalue()


def file_name(split: str, kind: str) -> str:
    return idx.idx_name(split, kind) + ".gz"


def verify() -> None:
    """Every shipped file is present and has its recorded SHA-256, else one line saying which is damaged."""
    for name, expected in SHA256.items():
        path = FOLDER / name
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as error:
            raise UserError(f"the embedded dataset {NAME} is incomplete ({path}: {error.strerror}); "
                            "reinstall fixedhead (pip install --force-reinstall fixedhead)") from None
        if digest != expected:
            raise UserError(f"the embedded dataset {NAME} is damaged: {path} has SHA-256 {digest[:16]}..., "
                            f"expected {expected[:16]}...; reinstall fixedhead (pip install --force-reinstall fixedhead)")


def read_split(split: str) -> dict:
    verify()
    return idx.read_split(FOLDER, split, idx.FASHION_CLASSES)
