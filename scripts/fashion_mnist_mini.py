"""Build the embedded fashion-mnist-mini files from the full Fashion-MNIST, and measure its size.

    python scripts/fashion_mnist_mini.py build --out src/fixedhead/data/fashion_mnist_mini
    python scripts/fashion_mnist_mini.py measure --train 100 200 300 500 --seeds 3 --out runs/mini-size

`build` writes the four gzipped IDX files (byte-identical on every run) and prints their SHA-256 for
`fixedhead.data.mini.SHA256`. `measure` trains the demo's four models on subsets of several sizes,
with the demo's settings and a fixed budget of images seen (so each size costs the same time), and
checks the criteria that chose the shipped size (issue 16): for each seed, both learned heads'
Spearman(class-vector cosine, confusions) > 0.4 and both fixed heads' |Spearman| <= 0.3; over the
seeds, the fixed cosine S=1 head beats the learned one (paired t 95% CI of the difference above 0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from fixedhead.data import idx, mini
from fixedhead.experiments.demo import demo


def build(folder: Path, per_class: dict, source=None) -> dict:
    """Write the subset's files into `folder`; returns {file name: SHA-256}."""
    source = idx.locate("fashion-mnist", source)
    if source is None:
        sys.exit("the full Fashion-MNIST is needed: apt-get install dataset-fashion-mnist, or --source DIR")
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for split, count in per_class.items():
        full = idx.read_split(source, split, idx.FASHION_CLASSES)
        keep = mini.select(full["labels"], count)
        for kind, array in (("images", full["images"][keep, 0]), ("labels", full["labels"][keep].astype(np.uint8))):
            data = mini.idx_bytes(array)
            (folder / mini.file_name(split, kind)).write_bytes(data)
            digests[mini.file_name(split, kind)] = hashlib.sha256(data).hexdigest()
    return digests


def criteria(seeds: list[dict]) -> dict:
    """The issue's three criteria over per-seed demo results."""
    rho = lambda s, name: s[name]["spearman_rho"]
    learned_ok = all(min(rho(s, "dot-learned"), rho(s, "cosine-learned")) > 0.4 for s in seeds)
    fixed_ok = all(max(abs(rho(s, "dot-fixed")), abs(rho(s, "cosine-fixed"))) <= 0.3 for s in seeds)
    fixed = [100 * s["cosine-fixed"]["acc"] for s in seeds]
    learned = [100 * s["cosine-learned"]["acc"] for s in seeds]
    gap = np.subtract(fixed, learned)
    low, high = stats.ttest_rel(fixed, learned).confidence_interval(0.95) if len(seeds) > 1 else (np.nan, np.nan)
    return {"learned_rho_above_0.4": learned_ok, "fixed_rho_within_0.3": fixed_ok,
            "cosine_gap_mean": float(gap.mean()), "cosine_gap_std": float(gap.std(ddof=1)) if len(gap) > 1 else None,
            "cosine_gap_ci95": [float(low), float(high)], "cosine_fixed_wins": bool(low > 0),
            "all_hold": bool(learned_ok and fixed_ok and low > 0)}


def measure(sizes: list[int], seeds: int, test_per_class: int, budget: int, out: Path, source=None) -> list[dict]:
    rows = []
    for train_per_class in sizes:
        epochs = max(1, round(budget / (10 * train_per_class)))
        with tempfile.TemporaryDirectory() as folder:
            build(Path(folder), {"train": train_per_class, "test": test_per_class}, source)
            per_seed, started = [], time.time()
            for seed in range(seeds):
                summary = demo(out / f"train{train_per_class}" / f"seed{seed}", data="fashion-mnist-mini", seed=seed,
                               overrides={"data.name": "fashion-mnist", "data.data_dir": folder,
                                          "train.epochs": epochs}, log=lambda m: None)
                per_seed.append(summary["results"])
        row = {"train_per_class": train_per_class, "test_per_class": test_per_class, "epochs": epochs,
               "seconds_per_demo": (time.time() - started) / seeds, "seeds": per_seed, **criteria(per_seed)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "seeds"}), flush=True)
        (out / "measure.json").write_text(json.dumps(rows, indent=1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", type=Path, default=mini.FOLDER)
    b.add_argument("--source", help="folder of the full Fashion-MNIST (default: the usual places)")
    m = sub.add_parser("measure")
    m.add_argument("--train", type=int, nargs="+", default=[100, 200, 300, 500], help="training images per class")
    m.add_argument("--test", type=int, default=mini.PER_CLASS["test"], help="test images per class")
    m.add_argument("--seeds", type=int, default=3)
    m.add_argument("--budget", type=int, default=mini.IMAGES_SEEN, help="training images seen per model")
    m.add_argument("--out", type=Path, default=Path("runs/mini-size"))
    m.add_argument("--source")
    args = parser.parse_args()
    if args.command == "build":
        print(json.dumps(build(args.out, mini.PER_CLASS, args.source), indent=1))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        measure(args.train, args.seeds, args.test, args.budget, args.out, args.source)


if __name__ == "__main__":
    main()
