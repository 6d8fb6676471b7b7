"""Read `ROOT/<split>/<class>/<image>` folders into uint8 arrays, decoding each image once."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UserError, shown
from ..files import check_regular

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def list_classes(split_dir: Path) -> list[str]:
    """Sorted class folder names of one split; errors name the folder and the layout expected."""
    if not split_dir.is_dir():
        raise UserError(f"expected a folder {split_dir}/ holding one sub-folder of images per class")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{split_dir}/ has no class folders; expected {split_dir}/<class>/<image files>")
    return classes


def list_images(split_dir: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Image files of every class folder present (sorted), with their index into `classes`."""
    paths, labels = [], []
    for name in sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if name not in classes:
            raise UserError(f"class folder {split_dir / name} is not a training class; known: {', '.join(classes)}")
        files = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"class folder {split_dir / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += files
        labels += [classes.index(name)] * len(files)
    return paths, labels


def _decode(path: Path, size: int | None) -> np.ndarray:
    check_regular(path, "image")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise UserError(f"image {path} claims more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels; refusing to decode it "
                        "(a decompression bomb, or far too large for this tool)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        raise UserError(f"cannot read image {path}: {shown(str(error), 120)}") from None


def decode_images(paths: list[Path], size: int | None = None) -> np.ndarray:
    """Decode to (N, 3, H, W) uint8. Without `size`, all images must share one size."""
    if not paths:
        raise UserError("no images to read: the folder or list of images is empty")
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(lambda p: _decode(p, size), paths, chunksize=256))
    shape = arrays[0].shape
    for path, array in zip(paths, arrays):
        if array.shape != shape:
            raise UserError(
                f"image {path} is {array.shape[1]}x{array.shape[0]} but {paths[0]} is {shape[1]}x{shape[0]}; "
                "set data.image_size to resize every image to one size"
            )
    return np.stack(arrays).transpose(0, 3, 1, 2).copy()  # (N, H, W, 3) -> (N, 3, H, W)
