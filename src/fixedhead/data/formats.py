"""Readers for the paper's on-disk formats: CIFAR-10/100 pickles, CIFAR-10.1 .npy, STL-10 binaries,
Tiny ImageNet folders. Each returns {"images": (N, 3, H, W) uint8, "labels": (N,) int64, "classes"}.

Corrupt or truncated files raise UserError naming the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..errors import UserError, reason
from ..files import check_regular
from .imagefolder import decode_images

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _admitted_globals() -> dict:
    """The exact (module, name) pairs a CIFAR pickle may name, mapped to the objects already loaded.

    Nothing is resolved by import: naming any other pair (or an admitted name under another module)
    is refused before Python looks the module up, so no module's import-time code can run.
    """
    reconstruct = np.ndarray((0,)).__reduce__()[0]  # numpy's array rebuilder, wherever this numpy keeps it
    scalar = np.float64(0).__reduce__()[0]
    pairs = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_encode}
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # how protocol 5 rebuilds an array from its bytes
    for package in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 spellings
        pairs[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        pairs[(f"{package}.multiarray", "scalar")] = scalar
        pairs[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return pairs


def _latin1_encode(text, encoding="utf-8"):
    """How Python 3 pickles bytes at protocol 2: _codecs.encode(str, 'latin1'); no other codec is run."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {str(encoding)[:20]!r}")
    return text.encode("latin1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a dataset file cannot run code."""

    ADMITTED = _admitted_globals()

    def find_class(self, module, name):
        try:
            return self.ADMITTED[(module, name)]
        except (KeyError, TypeError):
            raise pickle.UnpicklingError(f"refusing to load {str(module)[:60]}.{str(name)[:60]}") from None


# Everything a hostile or damaged pickle can raise while it is read, besides the unpickler's refusals.
_READ_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, KeyError,
                IndexError, OverflowError, MemoryError, RecursionError, UnicodeError, OSError)


def read_pickle(path: Path) -> dict:
    """A CIFAR pickle as a dict with str keys; any failure is one UserError naming the file."""
    try:
        with open(check_regular(path, "CIFAR pickle"), "rb") as file:
            data = _NumpyOnlyUnpickler(file, encoding="latin1").load()
    except FileNotFoundError:
        raise UserError(f"missing file {path}") from None
    except _READ_ERRORS as error:
        raise UserError(f"{path} is not a readable CIFAR pickle ({reason(error, 120)})") from None
    if not isinstance(data, dict) or not all(isinstance(k, (str, bytes)) for k in data):
        raise UserError(f"{path} is not a CIFAR pickle: expected a dict with text keys, found {type(data).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}


def class_names(value, path: Path, key: str) -> list[str]:
    """A list of class names (str, or bytes as older pickles hold them), else an error naming the file."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, bytes)) for v in value):
        return [v.decode("latin1") if isinstance(v, bytes) else v for v in value]
    raise UserError(f"{path}: '{key}' must be a non-empty list of class names")


def check_labels(labels, num_classes: int, path: Path) -> np.ndarray:
    """Integer labels in 0..num_classes-1 as int64 (N,): a list of ints or an integer array, nothing else."""
    if isinstance(labels, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        try:
            labels = np.asarray(labels, dtype=np.int64)
        except OverflowError:
            raise UserError(f"{path}: a label is outside 0..{num_classes - 1}") from None
    elif not (isinstance(labels, np.ndarray) and labels.dtype.kind in "iu"):
        raise UserError(f"{path}: labels must be a list or array of integers")
    labels = labels.astype(np.int64).reshape(-1)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise UserError(f"{path}: label {labels[bad][0]} is outside 0..{num_classes - 1}")
    return labels


def _cifar_images(batch: dict, path: Path) -> np.ndarray:
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: 'data' must be an (N, 3072) uint8 array of R, G, B planes")
    return data.reshape(-1, 3, 32, 32)


def cifar10_files(folder: Path, split: str, variant=None) -> list[Path]:
    names = [f"data_batch_{k}" for k in range(1, 6)] if split == "train" else ["test_batch"]
    return [folder / n for n in names] + [folder / "batches.meta"]


def read_cifar10(folder: Path, split: str, variant=None) -> dict:
    *batches, meta_path = cifar10_files(folder, split)
    classes = class_names(read_pickle(meta_path).get("label_names", CIFAR10_CLASSES), meta_path, "label_names")
    images, labels = [], []
    for path in batches:
        batch = read_pickle(path)
        images.append(_cifar_images(batch, path))
        labels.append(check_labels(batch.get("labels", []), len(classes), path))
        if len(labels[-1]) != len(images[-1]):
            raise UserError(f"{path}: {len(images[-1])} images but {len(labels[-1])} labels")
    return {"images": np.concatenate(images), "labels": np.concatenate(labels), "classes": classes}


def read_cifar100(folder: Path, split: str, variant: str = "fine") -> dict:
    meta = read_pickle(folder / "meta")
    classes = class_names(meta.get(f"{variant}_label_names"), folder / "meta", f"{variant}_label_names")
    path = folder / split
    batch = read_pickle(path)
    images = _cifar_images(batch, path)
    labels = check_labels(batch.get(f"{variant}_labels", []), len(classes), path)
    if len(labels) != len(images):
        raise UserError(f"{path}: {len(images)} images but {len(labels)} {variant} labels")
    return {"images": images, "labels": labels, "classes": classes}


def read_cifar101(folder: Path, split: str = "test", variant: str = "v6") -> dict:
    data_path, label_path = folder / f"cifar10.1_{variant}_data.npy", folder / f"cifar10.1_{variant}_labels.npy"
    try:
        images, labels = np.load(data_path, allow_pickle=False), np.load(label_path, allow_pickle=False)
    except FileNotFoundError as error:
        raise UserError(f"missing file {error.filename}") from None
    except (ValueError, OSError) as error:
        raise UserError(f"{data_path} or {label_path} is not a readable .npy file ({error})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise UserError(f"{data_path}: expected uint8 (N, 32, 32, 3), found {images.dtype} {images.shape}")
    if len(labels) != len(images):
        raise UserError(f"{label_path}: {len(labels)} labels for {len(images)} images")
    return {"images": images.transpose(0, 3, 1, 2).copy(), "labels": check_labels(labels, 10, label_path),
            "classes": list(CIFAR10_CLASSES)}


def read_stl10(folder: Path, split: str, variant=None) -> dict:
    """Raw uint8 binaries: each image 3 x 96 x 96 stored column-major; labels 1-based."""
    x_path, y_path = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    names_path = folder / "class_names.txt"
    classes = names_path.read_text().split() if names_path.exists() else [str(k) for k in range(10)]
    for path in (x_path, y_path):
        if not path.exists():
            raise UserError(f"missing file {path}")
    raw = np.fromfile(x_path, dtype=np.uint8)
    if raw.size == 0 or raw.size % (3 * 96 * 96):
        raise UserError(f"{x_path}: {raw.size} bytes is not a whole number of 3x96x96 images")
    images = raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)  # column-major -> (N, C, H, W)
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
    if len(labels) != len(images):
        raise UserError(f"{y_path}: {len(labels)} labels for {len(images)} images in {x_path}")
    return {"images": np.ascontiguousarray(images), "labels": check_labels(labels, len(classes), y_path),
            "classes": classes}


def tinyimagenet_sources(folder: Path, split: str, variant=None) -> tuple[list[str], list[Path], list[int]]:
    """(wnids, image paths, labels); the labelled val/ split serves as the test split."""
    wnids_path = folder / "wnids.txt"
    if not wnids_path.exists():
        raise UserError(f"missing file {wnids_path}")
    wnids = wnids_path.read_text(errors="replace").split()
    if not wnids or len(set(wnids)) != len(wnids):
        raise UserError(f"{wnids_path} must list each class's wnid once")
    index = {w: k for k, w in enumerate(wnids)}
    if split == "train":
        paths, labels = [], []
        for wnid in wnids:
            files = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
            if not files:
                raise UserError(f"{folder / 'train' / wnid / 'images'} holds no .JPEG images")
            paths += files
            labels += [index[wnid]] * len(files)
        return wnids, paths, labels
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.exists():
        raise UserError(f"missing file {annotations}")
    paths, labels = [], []
    lines = [line for line in annotations.read_text(errors="replace").splitlines() if line.strip()]
    if not lines:
        raise UserError(f"{annotations} is empty; it should list each validation image with its wnid")
    for number, line in enumerate(lines, 1):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise UserError(f"{annotations} line {number}: expected 'file<TAB>wnid<TAB>box' with a wnid from wnids.txt")
        paths.append(folder / "val" / "images" / parts[0])
        labels.append(index[parts[1]])
    return wnids, paths, labels


def tinyimagenet_names(folder: Path, wnids: list[str]) -> list[str]:
    """Readable class names from words.txt (first synonym), falling back to the wnid."""
    words = {}
    if (folder / "words.txt").exists():
        for line in (folder / "words.txt").read_text().splitlines():
            wnid, _, names = line.partition("\t")
            words[wnid] = names.split(",")[0].strip()
    return [words.get(w, w) for w in wnids]


def read_tinyimagenet(folder: Path, split: str, variant=None) -> dict:
    wnids, paths, labels = tinyimagenet_sources(folder, split)
    return {"images": decode_images(paths), "labels": np.asarray(labels, np.int64),
            "classes": tinyimagenet_names(folder, wnids)}


def cifar100_files(folder: Path, split: str, variant=None) -> list[Path]:
    return [folder / split, folder / "meta"]


def cifar101_files(folder: Path, split: str, variant: str = "v6") -> list[Path]:
    return [folder / f"cifar10.1_{variant}_data.npy", folder / f"cifar10.1_{variant}_labels.npy"]


def stl10_files(folder: Path, split: str, variant=None) -> list[Path]:
    return [folder / f"{split}_X.bin", folder / f"{split}_y.bin"]


def tinyimagenet_files(folder: Path, split: str, variant=None) -> list[Path]:
    return tinyimagenet_sources(folder, split)[1]
