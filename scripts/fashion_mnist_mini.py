"""Build the embedded fashion-mnist-mini files from the full Fashion-MNIST, and measure its size.

    python scripts/fashion_mnist_mini.py build --out src/fixedhead/data/fashion_mnist_mini
    python scripts/fashion_mnist_mini.py measure --train 100 200 300 500 --seeds 3 --out runs/mini-size
    python scripts/fashion_mnist_mini.py heldout --seeds 10 11 12 13 14 --out runs/mini-heldout

`build` writes the four gzipped IDX files (byte-identical on every run) and prints their SHA-256 for
`fixedhead.data.mini.SHA256`. `measure` trains the demo's four models on subsets of several sizes,
with the demo's settings and a fixed budget of images seen (so each size costs the same time), and
checks the criteria a size is chosen by: for each seed, both learned heads' Spearman(class-vector
cosine, confusions) > 0.4 and both fixed heads' |Spearman| <= 0.3; over the seeds, the fixed cosine S=1
head beats the learned one (paired t 95% CI of the difference above 0). It reads them on validation
images (200 a class from the full training set, outside the candidate subset), never on test images.
`heldout` is docs/protocol.md's M1: the shipped subset's readings on the 8,000 test images it does not
ship, with fresh seeds.
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
import torch
from scipy import stats

from fixedhead import metrics
from fixedhead.data import idx, mini
from fixedhead.evaluation.predict import predict
from fixedhead.evaluation.trained import load_trained
from fixedhead.experiments.demo import demo
from fixedhead.experiments.statistics import holm, non_inferiority_p, paired_difference_ci


def _source(source=None) -> Path:
    found = idx.locate("fashion-mnist", source)
    if found is None:
        sys.exit("the full Fashion-MNIST is needed: apt-get install dataset-fashion-mnist, or --source DIR")
    return found


def build(folder: Path, per_class: dict, source=None, validation: bool = False) -> dict:
    """Write the subset's files into `folder`; returns {file name: SHA-256}. With `validation`, the files
    named test hold validation images instead: `per_class["test"]` a class from the full training set,
    outside the training subset (what `measure` reads its criteria on)."""
    source = _source(source)
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for split, count in per_class.items():
        full = idx.read_split(source, "train" if validation else split, idx.FASHION_CLASSES)
        keep = mini.select(full["labels"], count)
        if validation and split == "test":
            rest = np.setdiff1d(np.arange(len(full["labels"])), mini.select(full["labels"], per_class["train"]))
            keep = rest[mini.select(full["labels"][rest], count, seed=mini.SELECTION_SEED + 1)]
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
            build(Path(folder), {"train": train_per_class, "test": test_per_class}, source, validation=True)
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


def _scores(run: str, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """A run's accuracy and Spearman(class-vector cosine, confusions) on these images, its own weights."""
    trained = load_trained(run, "cpu")
    out = predict(trained.model, trained.loader(images, labels), trained.config.train.bf16, tta=trained.config.train.tta)
    predicted = out["logits"].argmax(1)
    confusion = metrics.confusion_matrix(labels, predicted, len(trained.classes))
    cosines = metrics.cosine_matrix(trained.model.head.vectors().cpu())
    rho = metrics.similarity_confusion_spearman(cosines, confusion)
    return {"acc": metrics.accuracy(predicted, labels), "spearman_rho": rho["spearman_rho"], "num_images": len(labels),
            "confusion": confusion.tolist(), "class_vector_cosine": cosines.tolist()}


def heldout(seeds: list[int], out: Path, source=None) -> dict:
    """docs/protocol.md, M1: the demo on the shipped subset with `seeds`, each model scored on the full test
    set's images that the subset does not ship."""
    full = idx.read_split(_source(source), "test", idx.FASHION_CLASSES)
    rest = np.setdiff1d(np.arange(len(full["labels"])), mini.select(full["labels"], mini.PER_CLASS["test"]))
    images, labels = torch.from_numpy(full["images"][rest]), torch.from_numpy(full["labels"][rest])
    per_seed = {}
    for seed in seeds:
        summary = demo(out / f"seed{seed}", data=mini.NAME, seed=seed, log=lambda m: None)
        per_seed[seed] = {model: _scores(run, images, labels) for model, run in summary["runs"].items()}
        print(json.dumps({"seed": seed, **{m: round(r["acc"], 4) for m, r in per_seed[seed].items()}}), flush=True)
    result = {"seeds": seeds, "num_images": len(rest), "per_seed": per_seed, **_m1_verdicts(per_seed)}
    (out / "heldout.json").write_text(json.dumps(result, indent=1))
    return result


def _m1_verdicts(per_seed: dict) -> dict:
    """The protocol's two primary tests (Holm) and its secondary readings, from per-seed scores."""
    gap = {kind: paired_difference_ci({s: 100 * r[f"{kind}-fixed"]["acc"] for s, r in per_seed.items()},
                                      {s: 100 * r[f"{kind}-learned"]["acc"] for s, r in per_seed.items()})
           for kind in ("cosine", "dot")}
    p_cosine = gap["cosine"]["p"] / 2 if gap["cosine"]["diff"] > 0 else 1 - gap["cosine"]["p"] / 2  # one-sided
    p_dot = non_inferiority_p(gap["dot"]["diff"], gap["dot"]["low"], gap["dot"]["high"], gap["dot"]["n"], 1.0)
    adjusted = holm([p_cosine, p_dot])
    rho = lambda r, m: r[m]["spearman_rho"]
    claim1 = {s: min(rho(r, "dot-learned"), rho(r, "cosine-learned")) > 0.4
              and max(abs(rho(r, "dot-fixed")), abs(rho(r, "cosine-fixed"))) <= 0.3 for s, r in per_seed.items()}
    learned = {s: min(rho(r, "dot-learned"), rho(r, "cosine-learned")) for s, r in per_seed.items()}
    rho_gap = paired_difference_ci(learned, {s: max(abs(rho(r, "dot-fixed")), abs(rho(r, "cosine-fixed")))
                                             for s, r in per_seed.items()})
    return {"exploratory_close_pairs": {kind: _close_pairs(per_seed, kind) for kind in ("dot", "cosine")},
            "cosine_gap_points": gap["cosine"], "cosine_superior_p_holm": adjusted[0],
            "cosine_verdict": "superior" if adjusted[0] < 0.05 else "not shown",
            "dot_gap_points": gap["dot"], "dot_non_inferior_p_holm": adjusted[1],
            "dot_verdict": "non-inferior (margin 1 point)" if adjusted[1] < 0.05 else "not shown",
            "claim1_per_seed": claim1, "rho_learned_minus_fixed": rho_gap}


CLOSE_PAIRS = 5  # the class pairs a learned head places closest


def _close_pairs(per_seed: dict, kind: str) -> dict:
    """Exploratory (not in the protocol, read after M1): on the CLOSE_PAIRS class pairs whose vectors the
    learned head places closest, does the fixed head of the same seed confuse fewer images? Confusions both
    ways of each pair, as a share of the head's confusions, fixed - learned, paired by seed."""
    shares = {"learned": {}, "fixed": {}}
    for seed, runs in per_seed.items():
        cosines = np.asarray(runs[f"{kind}-learned"]["class_vector_cosine"])
        upper = [(cosines[i, j], i, j) for i in range(len(cosines)) for j in range(i + 1, len(cosines))]
        close = [(i, j) for _, i, j in sorted(upper, reverse=True)[:CLOSE_PAIRS]]
        for side in shares:
            confusion = np.asarray(runs[f"{kind}-{side}"]["confusion"])
            off = confusion.sum() - np.trace(confusion)
            shares[side][seed] = sum(confusion[i, j] + confusion[j, i] for i, j in close) / off if off else 0.0
    return {"share_learned": shares["learned"], "share_fixed": shares["fixed"],
            "fixed_minus_learned": paired_difference_ci(shares["fixed"], shares["learned"])}


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
    h = sub.add_parser("heldout")
    h.add_argument("--seeds", type=int, nargs="+", default=[10, 11, 12, 13, 14])
    h.add_argument("--out", type=Path, default=Path("runs/mini-heldout"))
    h.add_argument("--source")
    args = parser.parse_args()
    if args.command == "build":
        print(json.dumps(build(args.out, mini.PER_CLASS, args.source), indent=1))
    elif args.command == "heldout":
        args.out.mkdir(parents=True, exist_ok=True)
        result = heldout(args.seeds, args.out, args.source)
        print(json.dumps({k: v for k, v in result.items() if k != "per_seed"}, indent=1))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        measure(args.train, args.seeds, args.test, args.budget, args.out, args.source)


if __name__ == "__main__":
    main()
