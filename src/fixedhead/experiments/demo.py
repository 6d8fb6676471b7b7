"""The paper's four models (dot/cosine S=1, learned/fixed) trained, measured and read side by side.

On Fashion-MNIST (look-alike classes: the paper's situation): the full set when it is on this machine,
else the subset shipped with the package (data/mini.py). scikit-learn's digits (--data digits) is a
smoke test, not evidence: every model learns it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .. import plots, tables
from ..config import make_config, to_dict
from ..data import idx, mini
from ..errors import UserError
from ..evaluation.analysis import analyze
from ..files import write_json, write_text
from ..runs import RunDir
from ..training.fit import fit

MODELS = {
    "dot-learned": {"model.similarity": "dot", "model.fixed": False},
    "dot-fixed": {"model.similarity": "dot", "model.fixed": True},
    "cosine-learned": {"model.similarity": "cosine", "model.fixed": False, "model.scale": 1.0},
    "cosine-fixed": {"model.similarity": "cosine", "model.fixed": True, "model.scale": 1.0},
}

SETTINGS = {
    # about 30 s per model on 2 CPU cores
    "digits": {"data.name": "digits", "model.arch": "fastnet", "train.epochs": 15, "train.batch_size": 64,
               "train.lr": 0.05},
    # the embedded subset: the same images seen per model on every subset size (data/mini.py)
    mini.NAME: {"data.name": mini.NAME, "model.arch": "fastnet-small", "train.batch_size": 64, "train.lr": 0.05,
                "train.epochs": round(mini.IMAGES_SEEN / (10 * mini.PER_CLASS["train"])), "train.channels_last": True},
    # about 70 s per model on 2 CPU cores with native bf16 (the demo uses bf16 only where it is fast)
    "fashion-mnist": {"data.name": "fashion-mnist", "model.arch": "fastnet-small", "train.epochs": 3,
                      "train.batch_size": 128, "train.lr": 0.05, "train.channels_last": True},
}

TITLES = {mini.NAME: f"{mini.NAME}, the embedded subset of Fashion-MNIST ({mini.describe()})",
          "fashion-mnist": "Fashion-MNIST"}

SEED_NOISE_POINTS = 2.0  # accuracy gaps below this many points are not read from one seed

COLUMNS = (("acc", "accuracy"), ("spearman_rho", "Spearman(cos, confusions)"),
           ("mean_cos_to_predicted", "mean cos(f(x), w_pred)"), ("class_vector_cos_max", "max cos(w_i, w_j)"))


def choose_dataset(data: str, data_dir, log) -> str:
    """'auto': the full Fashion-MNIST when its files are here (never downloads), else the embedded subset."""
    if data == "auto":
        found = idx.locate("fashion-mnist", data_dir)
        if found is None:
            log(f"using {mini.NAME}, the embedded subset of Fashion-MNIST ({mini.describe()}); for the full set: "
                "apt-get install dataset-fashion-mnist, or fixedhead data download fashion-mnist --data-dir DIR")
            return mini.NAME
        log(f"using the full Fashion-MNIST from {found}")
        return "fashion-mnist"
    if data not in SETTINGS:
        raise UserError(f"unknown demo dataset {data!r}; choose one of: auto, {', '.join(SETTINGS)}")
    if data == "fashion-mnist" and idx.locate("fashion-mnist", data_dir) is None:
        from ..data.download import download

        log(f"downloading Fashion-MNIST into {data_dir or 'data'}")
        download("fashion-mnist", data_dir or "data")
    return data


def _run_one(name: str, config, out: Path, overwrite: bool, log) -> dict:
    run = RunDir(out / name)
    if run.is_finished() and not overwrite:
        if run.read_config() != to_dict(config):
            raise UserError(f"{run.path} holds a different finished run; choose another --out or pass --overwrite")
        log(f"{name}: reusing the finished run in {run.path}")
    else:
        log(f"{name}: training ({config.train.epochs:g} epochs of {config.model.arch} on {config.data.name})")
        fit(config, run.path, resume=True, overwrite=overwrite, verbose=False)  # an interrupted demo continues
    return analyze(run.path, device=config.train.device)


def results_table(results: dict) -> str:
    rows = [[name, *(f"{r[key]:.3f}" for key, _ in COLUMNS)] for name, r in results.items()]
    return tables.markdown_table(["model", *(title for _, title in COLUMNS)], rows)


def reading(results: dict) -> list[str]:
    """Plain sentences setting this run's numbers against the paper's claims."""
    r = {name: results[name] for name in MODELS}
    learned_rho = min(r["dot-learned"]["spearman_rho"], r["cosine-learned"]["spearman_rho"])
    fixed_rho = max(abs(r["dot-fixed"]["spearman_rho"]), abs(r["cosine-fixed"]["spearman_rho"]))
    cos_gain = 100 * (r["cosine-fixed"]["acc"] - r["cosine-learned"]["acc"])
    dot_gain = 100 * (r["dot-fixed"]["acc"] - r["dot-learned"]["acc"])
    held = lambda ok: "held" if ok else "did not hold"
    # One seed moves accuracy by about a point (docs/results.md), so smaller gaps are called neither way.
    gain = lambda points: held(points > 0) if abs(points) >= SEED_NOISE_POINTS else "too close to call with one seed"
    return [
        f"Learned class vectors encode class similarity (paper: Spearman 0.61-0.87): {held(learned_rho > fixed_rho + 0.2)} "
        f"here, rho = {r['dot-learned']['spearman_rho']:.2f} (dot) and {r['cosine-learned']['spearman_rho']:.2f} "
        f"(cosine) for learned heads against at most {fixed_rho:.2f} in size for fixed ones.",
        f"A fixed cosine head with S=1 trains better than a learned one (paper: up to +53 points): "
        f"{gain(cos_gain)} here, {cos_gain:+.1f} points.",
        f"Fixing dot-product class vectors raises accuracy (paper: up to +4 points): {gain(dot_gain)} here, "
        f"{dot_gain:+.1f} points.",
        f"One seed per model on {r['dot-learned']['num_images']:,} test images: a demonstration, not a measurement; "
        "differences of a point or two are within seed noise (docs/results.md has 3 seeds with CIs).",
    ]


def demo(out="runs/demo", data: str = "auto", data_dir=None, seed: int = 0, overrides: dict | None = None,
         overwrite: bool = False, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Train, analyse and read the four models; writes the runs, `summary.json` and `demo.md` under `out`."""
    out = Path(out)
    dataset = choose_dataset(data, data_dir, log)
    fast = {"train.bf16": "auto"} if dataset != "digits" else {}  # on where bf16 is fast
    layers = [SETTINGS[dataset], fast, {"data.data_dir": str(data_dir) if data_dir else None, "seed": seed}]
    results = {name: _run_one(name, make_config(*layers, head, overrides or {}), out, overwrite, log)
               for name, head in MODELS.items()}
    keep = ("acc", "spearman_rho", "spearman_p", "mean_cos_to_predicted", "class_vector_cos_max", "num_images")
    title = f"The paper's four models on {TITLES.get(dataset, dataset)} (seed {seed}, n = 1 run each, test split)"
    summary = {"dataset": dataset, "title": title, "seed": seed, "n_seeds": 1, "runs": {k: str(out / k) for k in MODELS},
               "results": {name: {k: r[k] for k in keep} for name, r in results.items()},
               "reading": reading(results)}
    panels = {name: (np.array(r["class_vector_cosine"]), r["classes"]) for name, r in results.items()}
    plots.heatmap_grid(panels, out / "class_vector_cosine")
    write_json(out / "summary.json", summary)
    text = (f"# {title}\n\n"
            f"{results_table(summary['results'])}\n\n" + "\n".join(f"- {s}" for s in summary["reading"])
            + "\n\n![class-vector cosine of the four models](class_vector_cosine.png)\n")
    write_text(out / "demo.md", text)
    return summary
