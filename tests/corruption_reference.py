"""Per-image reference implementations of the corruption definitions (imagecorruptions / ImageNet-C),
written straight from the definitions with numpy, scipy, Pillow and, where installed, OpenCV (the
library imagecorruptions itself calls). Used by the tests and by benchmarks/corruptions.py."""

import io

import numpy as np
from PIL import Image
from scipy import ndimage

try:
    import cv2
except ImportError:  # OpenCV is a dev extra; the scipy versions stand in without it
    cv2 = None


def disk_scipy(radius, alias_blur):
    """imagecorruptions' disk(): aliased disk, normalised, then a Gaussian blur (reflect-101 borders)."""
    grid, ksize = (np.arange(-8, 9), 3) if radius <= 8 else (np.arange(-radius, radius + 1), 5)
    x, y = np.meshgrid(grid, grid)
    disk = ((x ** 2 + y ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    t = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-t ** 2 / (2 * alias_blur ** 2))
    g /= g.sum()
    return ndimage.correlate1d(ndimage.correlate1d(disk, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")


def defocus_scipy(image, radius, alias_blur):
    x = image / 255.0
    kernel = disk_scipy(radius, alias_blur)
    channels = np.stack([ndimage.correlate(x[:, :, d], kernel, mode="mirror") for d in range(3)], axis=2)
    return (np.clip(channels, 0, 1) * 255).astype(np.uint8)


def defocus_opencv(image, radius, alias_blur):
    """imagecorruptions.defocus_blur, operation for operation, then imgaug's cast to uint8."""
    grid, ksize = (np.arange(-8, 9), (3, 3)) if radius <= 8 else (np.arange(-radius, radius + 1), (5, 5))
    x, y = np.meshgrid(grid, grid)
    disk = np.array((x ** 2 + y ** 2) <= radius ** 2, dtype=np.float32)
    disk /= np.sum(disk)
    kernel = cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)
    image = np.array(image) / 255.0
    channels = np.array([cv2.filter2D(image[:, :, d], -1, kernel) for d in range(3)]).transpose((1, 2, 0))
    return (np.clip(channels, 0, 1) * 255).astype(np.uint8)


def impulse(image, amount, rng):
    """skimage.util.random_noise(mode='s&p', salt_vs_pepper=0.5) on uint8 values."""
    out = image.copy()
    flipped = rng.random(image.shape) <= amount
    salted = rng.random(image.shape) <= 0.5
    out[flipped & salted] = 255
    out[flipped & ~salted] = 0
    return out


def jpeg(image, quality):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer))
