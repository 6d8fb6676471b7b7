"""Time to reach test-accuracy targets: training seconds until the first epoch whose test accuracy
(logged per epoch with train.log_test, a measurement only) reaches each target.

    python benchmarks/time_to_accuracy.py --data imagefolder --data-dir /tmp/cifar10-jpeg --targets 0.85 0.90
    python benchmarks/time_to_accuracy.py --tiny          # digits, seconds: checks the script itself
    ... --set train.label_smoothing=0.2 --set train.warmup_epochs=0.5   # any other config key
    ... --set model.whiten=frozen --set train.tta=flip-shift            # the CPU recipe (README)
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from fixedhead import fit
from fixedhead.config import make_config, parse_overrides
from fixedhead.devices import native_bf16, resolve_device


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="imagefolder")
    parser.add_argument("--data-dir")
    parser.add_argument("--arch", default="fastnet")
    parser.add_argument("--similarity", default="cosine")
    parser.add_argument("--scale", type=float, default=16.0)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.85, 0.90])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other config key")
    parser.add_argument("--tiny", action="store_true", help="digits, 3 epochs: a check of the script")
    args = parser.parse_args()
    overrides = {"data.name": args.data, "data.data_dir": args.data_dir, "model.arch": args.arch,
                 "model.similarity": args.similarity, "model.fixed": True, "train.epochs": args.epochs,
                 "train.batch_size": args.batch_size, "train.lr": args.lr,
                 "train.bf16": native_bf16(resolve_device(args.device)),  # emulated bf16 on a CPU: 10x slower
                 "train.channels_last": True, "train.log_test": True, "train.device": args.device,
                 "train.weight_decay": 5e-4}
    if args.similarity == "cosine":
        overrides["model.scale"] = args.scale
    if args.tiny:
        overrides.update({"data.name": "digits", "data.data_dir": None, "model.arch": "fastnet-small",
                          "train.epochs": 3, "train.batch_size": 64, "train.lr": 0.05})
    config = make_config(overrides, parse_overrides(args.set))
    print(f"machine: {platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"{config.model.arch} + fixed {config.model.similarity} head on {config.data.name}, {config.train.epochs} epochs, "
          f"device {config.train.device}; train settings {config.train}")
    with tempfile.TemporaryDirectory() as tmp:
        final = fit(config, Path(tmp) / "run", verbose=False)
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    elapsed = 0.0
    reached = {}
    for record in records:
        elapsed += record["epoch_time_s"]
        print(f"epoch {record['epoch']:3d}  {elapsed:8.1f} s  test_acc {record['test_acc']:.4f}")
        for target in args.targets:
            if target not in reached and record["test_acc"] >= target:
                reached[target] = (elapsed, record["epoch"])
    for target in args.targets:
        where = f"{reached[target][0]:.1f} s (epoch {reached[target][1]})" if target in reached else "not reached"
        print(f"time to {target:.0%} test accuracy: {where}")
    print(f"final test accuracy {final['test_acc']:.4f} after {final['train_time_s']:.1f} s of training "
          f"(test-time augmentation {final['tta']}: {final['test_time_s']:.1f} s to evaluate the test set)")


if __name__ == "__main__":
    main()
