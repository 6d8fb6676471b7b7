"""MNIST-style IDX files (gzipped or not): Fashion-MNIST and MNIST."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import check_regular

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
PREFIX = {"train": "train", "test": "t10k"}
SYSTEM_DIR = Path("/usr/share/datasets")  # where Debian's dataset-fashion-mnist puts the files
TORCHVISION_DIR = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
MAX_IDX_BYTES = 4 << 30  # what an IDX header may claim (MNIST's training images: 47 MB)


def idx_name(split: str, kind: str) -> str:
    """The usual file name of a split's images or labels, without the .gz."""
    return f"{PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"


def idx_file(folder: Path, split: str, kind: str) -> Path:
    """The images or labels file of a split, gzipped or not (the .gz wins when both exist)."""
    name = idx_name(split, kind)
    return folder / f"{name}.gz" if (folder / f"{name}.gz").exists() else folder / name


def candidates(name: str, root) -> list[Path]:
    """Where to look, in order: --data-dir (and its usual sub-folders), then /usr/share/datasets/<name>/."""
    places = []
    if root is not None:
        root = Path(root).expanduser()
        places += [root, root / name, root / TORCHVISION_DIR[name] / "raw"]
    return places + [SYSTEM_DIR / name]


def locate(name: str, root) -> Path | None:
    for folder in candidates(name, root):
        if idx_file(folder, "train", "images").exists() or idx_file(folder, "test", "images").exists():
            return folder
    return None


def read_idx(path: Path, expected_dims: int) -> np.ndarray:
    """An IDX array of unsigned bytes; a wrong magic number or a short file is an error naming it."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(check_regular(path, "IDX file"), "rb") as file:
            raw = file.read(4 + 4 * expected_dims)
            shape = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(expected_dims))
            magic = bytes((0, 0, 0x08, expected_dims))
            claimed = math.prod(shape) if len(raw) == 4 + 4 * expected_dims and raw[:4] == magic else 0
            if claimed > MAX_IDX_BYTES:
                raise UserError(f"{path} claims {claimed:,} bytes of images, more than {MAX_IDX_BYTES >> 30} GiB")
            raw += file.read(claimed + 1)  # no more than the header claims: a gzip bomb stops here
    except FileNotFoundError:
        raise UserError(f"missing file {path}") from None
    except (OSError, EOFError) as error:
        raise UserError(f"{path} is not a readable IDX file ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != expected_dims:
        raise UserError(f"{path}: bad magic number {raw[:4].hex()}, expected 000008{expected_dims:02x} "
                        f"(unsigned bytes, {expected_dims} dimensions)")
    header = 4 + 4 * expected_dims
    shape = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(expected_dims))
    if len(raw) < header:
        raise UserError(f"{path}: the file is shorter than its {expected_dims}-dimension header")
    if len(raw) != header + math.prod(shape):  # exact integers: no overflow
        raise UserError(f"{path}: header says {shape} but the file holds {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_split(folder: Path, split: str, classes: list[str]) -> dict:
    images_path, labels_path = idx_file(folder, split, "images"), idx_file(folder, split, "labels")
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1).astype(np.int64)
    if len(images) != len(labels):
        raise UserError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if labels.max(initial=0) >= len(classes):
        raise UserError(f"{labels_path}: label {labels.max()} is outside 0..{len(classes) - 1}")
    return {"images": images[:, None].copy(), "labels": labels, "classes": classes}  # (N, 1, 28, 28)
