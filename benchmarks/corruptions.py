"""Corruptions: fixedhead's batched implementation vs a per-image loop of the reference definitions.

Claim: on the 10,000 CIFAR-10 (JPEG) test images, all three corruptions x 5 severities, the batched
implementation is never slower than the per-image reference in total, impulse noise at least 3x
faster; and a second evaluation of a corrupted set is served from the cache. The reference is the
imagecorruptions code path (OpenCV for defocus when installed, else scipy; skimage-style noise; Pillow
JPEG), timed in the same run. Also prints how often defocus agrees exactly with the reference.

    python benchmarks/corruptions.py [--data ../shared/data/cifar10-jpeg.tar.gz] [--preset imagenet-c]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import corruption_reference as ref  # noqa: E402
from fixedhead import data  # noqa: E402
from fixedhead.evaluation.corruptions import CORRUPTIONS, PRESETS, corrupt  # noqa: E402
from fixedhead.evaluation.robustness import corrupted_set  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def reference(images, name, params, seed=0):
    rng = np.random.default_rng(seed)
    if name == "impulse_noise":
        return np.stack([ref.impulse(i, params, rng) for i in images])
    if name == "jpeg_compression":
        return np.stack([ref.jpeg(i, params) for i in images])
    defocus = ref.defocus_opencv if ref.cv2 is not None else ref.defocus_scipy
    return np.stack([defocus(i, *params) for i in images])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--preset", default="imagenet-c")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} is absent: this benchmark needs the shared CIFAR-10 (JPEG) archive")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"defocus reference: {'OpenCV ' + ref.cv2.__version__ if ref.cv2 is not None else 'scipy'}")
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.data) as archive:
            archive.extractall(tmp, members=[m for m in archive if m.name.lstrip("./").startswith("test")],
                               filter="data")
        os.environ["FIXEDHEAD_CACHE"] = str(Path(tmp) / "cache")
        test = data.load("imagefolder", tmp, "test") if (Path(tmp) / "train").exists() else None
        if test is None:
            (Path(tmp) / "train").symlink_to(Path(tmp) / "test")
            test = data.load("imagefolder", tmp, "test")
        images = test.images.permute(0, 2, 3, 1).contiguous().numpy()
        print(f"{len(images)} test images, preset {args.preset}, 5 severities each")
        total_ours = total_ref = 0.0
        for name in CORRUPTIONS:
            t_ours = t_ref = 0.0
            agree = []
            for severity in range(1, 6):
                start = time.perf_counter()
                ours = corrupt(images, name, severity, args.preset)
                t_ours += time.perf_counter() - start
                start = time.perf_counter()
                theirs = reference(images, name, PRESETS[args.preset][name][severity - 1])
                t_ref += time.perf_counter() - start
                agree.append((ours == theirs).mean())
            total_ours, total_ref = total_ours + t_ours, total_ref + t_ref
            note = f", exact agreement {min(agree):.4f}-{max(agree):.4f}" if name != "impulse_noise" else ""
            print(f"{name:17} ours {t_ours:6.2f} s  reference {t_ref:6.2f} s  -> {t_ref / t_ours:5.1f}x{note}")
        print(f"{'all':17} ours {total_ours:6.2f} s  reference {total_ref:6.2f} s  -> {total_ref / total_ours:5.1f}x")
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        start = time.perf_counter()
        corrupted_set(tensor, "defocus_blur", 3, args.preset, 0)
        first = time.perf_counter() - start
        start = time.perf_counter()
        corrupted_set(tensor, "defocus_blur", 3, args.preset, 0)
        second = time.perf_counter() - start
        print(f"corrupted set (defocus_blur, severity 3): made and cached {first:.2f} s, from the cache {second:.2f} s")


if __name__ == "__main__":
    main()
