"""End to end: fixedhead's trainer vs a plain PyTorch loop with a per-image torchvision DataLoader
(the way the authors' code trains), same model, batch, epochs and images.

Claim: at least 3x faster end to end on 2 CPU cores than the authors' way (float32, per-image
DataLoader). A second baseline gives the plain loop our bf16 + channels_last as well, so that its ratio
is the input pipeline and the loop alone. Same encoder, fixed cosine head, batch, epochs and images.

    python benchmarks/trainer_vs_plain.py [--data ../shared/data/cifar10-jpeg.tar.gz] [--images 10000]
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
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from fixedhead import ClassHead, Classifier, build_encoder, fit
from fixedhead.config import make_config

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def subset(archive: Path, root: Path, per_class: int) -> None:
    counts = {}
    with tarfile.open(archive) as opened:
        keep = []
        for member in opened:
            parts = member.name.lstrip("./").split("/")
            if member.isfile() and len(parts) == 3:
                key = (parts[0], parts[1])
                counts[key] = counts.get(key, 0) + 1
                if counts[key] <= (per_class if parts[0] == "train" else 100):
                    keep.append(member)
        opened.extractall(root, members=keep, filter="data")


def plain(root: Path, arch: str, epochs: int, batch: int, workers: int, low_precision: bool) -> float:
    """What a weekend script does: ImageFolder, per-image transforms, DataLoader, a training loop
    (float32 like the authors' code, or bf16 autocast + channels_last like ours)."""
    torch.manual_seed(0)
    normalize = transforms.Normalize((0.491, 0.482, 0.447), (0.247, 0.243, 0.261))
    train = datasets.ImageFolder(str(root / "train"), transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]))
    loader = DataLoader(train, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    encoder = build_encoder(arch)
    model = Classifier(encoder, ClassHead(encoder.num_features, 10, "cosine", fixed=True, scale=16.0))
    fmt = torch.channels_last if low_precision else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4)
    start = time.perf_counter()
    for _ in range(epochs):
        for images, labels in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low_precision):
                loss = F.cross_entropy(model(images.contiguous(memory_format=fmt)).float(), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def ours(root: Path, arch: str, epochs: int, batch: int, run_dir: Path) -> float:
    config = make_config({"data.name": "imagefolder", "data.data_dir": str(root), "model.arch": arch,
                          "model.similarity": "cosine", "model.fixed": True, "model.scale": 16.0, "train.epochs": epochs,
                          "train.batch_size": batch, "train.lr": 0.2, "train.bf16": True, "train.channels_last": True})
    start = time.perf_counter()
    fit(config, run_dir, verbose=False)  # includes the first decode of the JPEGs and the final test
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--images", type=int, default=10000, help="training images (a class-balanced subset)")
    parser.add_argument("--arch", default="fastnet-small")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} is absent: this benchmark needs the shared CIFAR-10 (JPEG) archive")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; {args.arch}, "
          f"{args.images} images, {args.epochs} epochs, batch {args.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        subset(args.data, root, args.images // 10)
        os.environ["FIXEDHEAD_CACHE"] = str(Path(tmp) / "cache")
        t_fp32 = plain(root, args.arch, args.epochs, args.batch, args.workers, low_precision=False)
        t_bf16 = plain(root, args.arch, args.epochs, args.batch, args.workers, low_precision=True)
        t_ours = ours(root, args.arch, args.epochs, args.batch, Path(tmp) / "run")
    print(f"plain loop + per-image DataLoader ({args.workers} workers), float32 (the authors' way): {t_fp32:.1f} s")
    print(f"plain loop + per-image DataLoader ({args.workers} workers), bf16 + channels_last:       {t_bf16:.1f} s")
    print(f"fixedhead fit (decode, train, final test), bf16 + channels_last:             {t_ours:.1f} s")
    print(f"fixedhead vs the authors' way: {t_fp32 / t_ours:.2f}x faster; vs the same loop in bf16: "
          f"{t_bf16 / t_ours:.2f}x faster")


if __name__ == "__main__":
    main()
