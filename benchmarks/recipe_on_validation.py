"""Choose a training recipe on validation, never on test: train on the training set less a held-out
10%, then score the final weights on that held-out split with every test-time augmentation.

One training run gives the accuracy under each TTA mode, so the modes are compared on the same weights.
This is how the CPU recipe timed by time_to_accuracy.py was chosen (README, Benchmarks):

    python benchmarks/recipe_on_validation.py --data-dir /tmp/cifar --epochs 10 --set model.whiten=frozen
    python benchmarks/recipe_on_validation.py --tiny     # digits, seconds: checks the script itself
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from fixedhead import fit
from fixedhead.config import make_config, parse_overrides
from fixedhead.data.loaders import prepare
from fixedhead.data.pipeline import TTA_VIEWS
from fixedhead.devices import native_bf16
from fixedhead.evaluation.predict import predict, scores
from fixedhead.evaluation.trained import load_trained


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="imagefolder")
    parser.add_argument("--data-dir")
    parser.add_argument("--arch", default="fastnet-small")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other config key")
    parser.add_argument("--tiny", action="store_true", help="digits, 2 epochs: a check of the script")
    args = parser.parse_args()
    overrides = {"data.name": args.data, "data.data_dir": args.data_dir, "data.val_fraction": 0.1,
                 "model.arch": args.arch, "model.similarity": "cosine", "model.fixed": True, "model.scale": 16.0,
                 "train.epochs": args.epochs, "train.batch_size": 256, "train.lr": 0.2,
                 "train.label_smoothing": 0.2, "train.bf16": native_bf16("cpu"), "train.channels_last": True,
                 "seed": args.seed}
    modes = tuple(TTA_VIEWS)
    if args.tiny:
        overrides.update({"data.name": "digits", "data.data_dir": None, "train.epochs": 2, "train.batch_size": 64,
                          "train.lr": 0.05})
        modes = ("none", "shift")  # digits are not mirrored in training
    config = make_config(overrides, parse_overrides(args.set))
    print(f"machine: {platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"{config.model.arch}, whiten {config.model.whiten}, {config.train.epochs} epochs, seed {config.seed}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        final = fit(config, Path(tmp) / "run", verbose=False)
        wall = time.perf_counter() - start
        model = load_trained(Path(tmp) / "run").model
    data = prepare(config.data, seed=config.seed, batch_size=config.train.batch_size, eval_batch_size=1000,
                   device="cpu", channels_last=config.train.channels_last, with_val=True)
    model = model.to(memory_format=torch.channels_last if config.train.channels_last else torch.preserve_format)
    accuracy = {}
    for mode in modes:
        start = time.perf_counter()
        accuracy[mode] = scores(predict(model, data["val"], config.train.bf16, tta=mode))["acc"]
        print(f"validation accuracy, tta {mode:10s} {accuracy[mode]:.4f}  ({len(data['val'].labels)} images, "
              f"{time.perf_counter() - start:.1f} s)")
    print(f"training {final['train_time_s']:.1f} s ({wall:.0f} s wall); best tta vs none: "
          f"{max(accuracy.values()) - accuracy['none']:+.4f}")
    print(json.dumps({"settings": args.set, "epochs": config.train.epochs, "seed": config.seed, "val_acc": accuracy,
                      "train_time_s": round(final["train_time_s"], 1)}))


if __name__ == "__main__":
    main()
