"""Impulse noise, JPEG compression and defocus blur (the paper's Section 4.3), batched and seeded.

Definitions follow `imagecorruptions` (ImageNet-C), which imgaug's `imgcorruptlike` wraps, and the
CIFAR-10-C / Tiny-ImageNet-C constants; see PRESETS. Images are uint8, N x H x W x 3 (numpy or
torch) or N x 3 x H x W (torch); the output has the input's type and layout. The noise of an image
depends only on its pixels, the seed and the parameters: the same image gets the same corruption
whatever batch it sits in.
"""

from __future__ import annotations

import functools
import io
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError

CORRUPTIONS = ("impulse_noise", "jpeg_compression", "defocus_blur")

# preset -> corruption -> parameters for severities 1..5
PRESETS = {
    "imagenet-c": {
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "jpeg_compression": (25, 18, 15, 10, 7),
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    },
    "cifar-c": {
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "jpeg_compression": (80, 65, 58, 50, 40),
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    },
    "tiny-imagenet-c": {
        "impulse_noise": (0.01, 0.02, 0.05, 0.08, 0.14),
        "jpeg_compression": (65, 58, 50, 40, 25),
        "defocus_blur": ((0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)),
    },
}


@functools.lru_cache(maxsize=8)
def _multipliers(size: int) -> np.ndarray:
    """A fixed table of random odd 64-bit multipliers, one per value of an image."""
    return np.random.default_rng(0x5EED).integers(0, 2 ** 64, size, dtype=np.uint64, endpoint=False) | np.uint64(1)


def image_keys(images: np.ndarray, seed: int) -> np.ndarray:
    """One odd uint64 per image from its pixels and the seed (a seeded multiply-sum hash, then a mix)."""
    flat = images.reshape(len(images), -1)
    if flat.shape[1] % 8:
        flat = np.pad(flat, ((0, 0), (0, -flat.shape[1] % 8)))  # whole 64-bit words
    words = flat.view(np.uint64)
    table = np.random.default_rng(seed).integers(0, 2 ** 64, words.shape[1], dtype=np.uint64, endpoint=False)
    with np.errstate(over="ignore"):
        keys = (words * (table | np.uint64(1))).sum(axis=1, dtype=np.uint64)
        keys ^= keys >> np.uint64(31)
        keys *= np.uint64(0xBF58476D1CE4E5B9)
        keys ^= keys >> np.uint64(29)
    return keys | np.uint64(1)


def impulse_noise(images: np.ndarray, amount: float, seed: int = 0) -> np.ndarray:
    """Salt and pepper on each channel value: with probability `amount` it becomes 255 or 0, half each.

    The random bits of value j of image i are key_i * m_j (mod 2^64), a multiply-shift hash with a
    random odd multiplier m_j per position and a key per image from its pixels and the seed: so an
    image gets the same noise in any batch, and no generator is created per image. A value is
    replaced when its 64 bits fall below amount * 2^64; bit 31 then picks salt or pepper.
    """
    out = images.copy().reshape(len(images), -1)
    keys, multipliers = image_keys(images, seed), _multipliers(out.shape[1])
    threshold = np.uint64(min(round(amount * 2 ** 64), 2 ** 64 - 1))
    chunk = 256  # keeps the (chunk, values) product in cache-sized pieces
    bits = np.empty((chunk, out.shape[1]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, len(out), chunk):
            part = bits[: len(keys[start:start + chunk])]
            np.multiply(keys[start:start + chunk, None], multipliers[None, :], out=part)
            index = np.flatnonzero(part < threshold)
            salt = (part.ravel()[index] >> np.uint64(31)) & np.uint64(1)
            out[start:start + chunk].ravel()[index] = (salt * np.uint64(255)).astype(np.uint8)
    return out.reshape(images.shape)


def _jpeg_one(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer))


def jpeg_compression(images: np.ndarray, quality: int, seed: int = 0) -> np.ndarray:
    """Encode with Pillow at `quality` and decode: bound by the codec (threads only added overhead)."""
    return np.stack([_jpeg_one(image, quality) for image in images])


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def defocus_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The aliased disk on a 17x17 grid ((2r+1)^2 when r > 8), normalised, then Gaussian-smoothed
    (3x3, or 5x5 when r > 8) with reflect-101 borders, as imagecorruptions' `disk` does with OpenCV."""
    half, blur = (8, 3) if radius <= 8 else (int(radius), 5)
    grid = np.arange(-half, half + 1)
    x, y = np.meshgrid(grid, grid)
    disk = ((x ** 2 + y ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    g = _gaussian_1d(blur, alias_blur)
    pad = blur // 2
    padded = np.pad(disk, pad, mode="reflect")  # numpy 'reflect' = OpenCV BORDER_REFLECT_101
    rows = sum(g[k] * padded[k:k + disk.shape[0], :] for k in range(blur))
    return sum(g[k] * rows[:, k:k + disk.shape[1]] for k in range(blur))


def defocus_blur(images: np.ndarray, radius: float, alias_blur: float, seed: int = 0) -> np.ndarray:
    """Correlate each channel of x/255 with the defocus kernel (reflect-101 borders), clip, x255, truncate.

    The correlation runs as a float32 FFT product over the reflect-padded image: the numbers of direct
    correlation up to about 3e-5 grey levels, at a fraction of the cost for kernels of 17x17 and up.
    """
    kernel = torch.from_numpy(defocus_kernel(radius, alias_blur)).float()
    size = kernel.shape[0]
    pad = size // 2
    if min(images.shape[1:3]) <= pad:
        raise UserError(f"defocus_blur with radius {radius} needs images larger than {pad} px on each side, "
                        f"got {images.shape[1]}x{images.shape[2]}")
    height, width = images.shape[1:3]
    shape = (height + 2 * pad, width + 2 * pad)
    spectrum = torch.fft.rfft2(kernel.flip(0, 1), s=shape)  # flipped: convolution with it = correlation
    out = []
    for chunk in torch.from_numpy(images).split(256):
        x = chunk.permute(0, 3, 1, 2).float().div_(255)  # (n, 3, H, W)
        padded = F.pad(x, (pad,) * 4, mode="reflect")  # torch 'reflect' = OpenCV BORDER_REFLECT_101
        full = torch.fft.irfft2(torch.fft.rfft2(padded) * spectrum, s=shape)
        out.append(full[..., size - 1:, size - 1:])  # the (H, W) outputs that did not wrap around
    blurred = torch.cat(out).clamp_(0, 1).mul_(255)
    # Rounding must not decide a truncation: values that are integers up to rounding (flat regions,
    # near-delta kernels) are snapped to them first.
    nearest = blurred.round()
    blurred = torch.where((blurred - nearest).abs() < 1e-3, nearest, blurred)
    return blurred.to(torch.uint8).permute(0, 2, 3, 1).numpy()  # .to(uint8) truncates, as the reference


FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {"impulse_noise": impulse_noise, "jpeg_compression": jpeg_compression,
                                                   "defocus_blur": defocus_blur}


def parameters(name: str, severity: int, preset: str = "imagenet-c"):
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if name not in CORRUPTIONS:
        raise UserError(f"unknown corruption {name!r}; choose one of: {', '.join(CORRUPTIONS)}")
    if not (isinstance(severity, (int, np.integer)) and 1 <= severity <= 5):
        raise UserError(f"severity must be an integer from 1 to 5, got {severity!r}")
    return PRESETS[preset][name][severity - 1]


def _to_nhwc(images):
    """(numpy NHWC array, how to give the result back in the input's type and layout)."""
    if isinstance(images, torch.Tensor):
        channels_first = images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3
        array = (images.permute(0, 2, 3, 1) if channels_first else images).cpu().contiguous().numpy()
        back = (lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()) if channels_first else torch.from_numpy
        return array, back
    return np.asarray(images), lambda a: a


def corrupt(images, name: str, severity: int, preset: str = "imagenet-c", seed: int = 0):
    """Corrupt a batch of uint8 RGB images with one corruption at one severity (1-5)."""
    params = parameters(name, severity, preset)
    array, back = _to_nhwc(images)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise UserError(f"images must be uint8 N x H x W x 3 (or a N x 3 x H x W tensor), got {array.dtype} "
                        f"{tuple(array.shape)}")
    if len(array) == 0:
        return back(array.copy())
    args = params if isinstance(params, tuple) else (params,)
    return back(np.ascontiguousarray(FUNCTIONS[name](array, *args, seed=seed)))
