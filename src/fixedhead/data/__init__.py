"""Dataset registry: `load(name, root, split)` returns an ImageSet of uint8 images (N, C, H, W)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from . import cache
from .imagefolder import decode_images, list_classes, list_images

SPLITS = ("train", "test")


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _digits(root, split: str, image_size: int | None) -> ImageSet:
    """scikit-learn's 8x8 digits (1797 images), upsampled x2 to 16 px; fixed stratified 70/30 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 -> 0..255
    train, test = train_test_split(np.arange(len(images)), test_size=0.3, random_state=0, stratify=digits.target)
    index = train if split == "train" else test
    x = torch.from_numpy(images[index]).unsqueeze(1)  # (N, 1, 8, 8)
    x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest x2 -> (N, 1, 16, 16)
    if image_size not in (None, 16):
        x = torch.nn.functional.interpolate(x.float(), size=image_size, mode="bilinear").round().byte()
    return ImageSet(x, torch.from_numpy(digits.target[index]).long(), [str(d) for d in range(10)])


def _imagefolder(root, split: str, image_size: int | None) -> ImageSet:
    """`ROOT/train/<class>/*` and `ROOT/test/<class>/*`; classes are the sorted train folder names."""
    if root is None:
        raise UserError("dataset 'imagefolder' needs --data-dir DIR holding DIR/train/<class>/ and DIR/test/<class>/")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist; expected {root}/train/<class>/ and {root}/test/<class>/")
    classes = list_classes(root / "train")
    split_dir = root / split
    list_classes(split_dir)  # a clear error when the split folder is missing or empty
    paths, labels = list_images(split_dir, classes)
    key = cache.source_key(paths, f"imagefolder|{image_size}|{classes}")
    entry = cache.load_entry(cache.default_cache_dir(), key)
    if entry is None:
        images = decode_images(paths, image_size)
        cache.store_entry(cache.default_cache_dir(), key, images, np.asarray(labels, dtype=np.int64), classes)
    else:
        images = np.asarray(entry["images"])
    return ImageSet(torch.from_numpy(np.array(images)), torch.tensor(labels, dtype=torch.long), classes)


@dataclass(frozen=True)
class DatasetSpec:
    reader: object
    flip: bool  # horizontal flips keep the label (false for digits)


DATASETS = {
    "digits": DatasetSpec(_digits, flip=False),
    "imagefolder": DatasetSpec(_imagefolder, flip=True),
}


def load(name: str, root=None, split: str = "train", image_size: int | None = None) -> ImageSet:
    """Load one split of a registered dataset as uint8 tensors."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return DATASETS[name].reader(root, split, image_size)
