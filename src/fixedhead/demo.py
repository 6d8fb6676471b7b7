"""The paper's four models (dot/cosine S=1, learned/fixed) trained and measured side by side."""

from __future__ import annotations

import sys
from pathlib import Path

from .analysis import analyze
from .config import make_config, to_dict
from .errors import UserError
from .runs import RunDir, write_json
from .train import fit

MODELS = {
    "dot-learned": {"model.head": "dot", "model.fixed": False},
    "dot-fixed": {"model.head": "dot", "model.fixed": True},
    "cosine-learned": {"model.head": "cosine", "model.fixed": False, "model.scale": 1.0},
    "cosine-fixed": {"model.head": "cosine", "model.fixed": True, "model.scale": 1.0},
}

# digits at 16 px: about 30 s per model on 2 CPU cores.
DIGITS = {"data.name": "digits", "model.arch": "fastnet", "train.epochs": 15, "train.batch_size": 64,
          "train.lr": 0.05, "train.weight_decay": 5e-4}

COLUMNS = (("acc", "accuracy"), ("mean_cos_to_predicted", "mean cos(f(x), w_pred)"),
           ("class_vector_cos_max", "max cos(w_i, w_j)"), ("spearman_rho", "Spearman(cos, confusions)"))


def _run_one(name: str, config, out: Path, overwrite: bool, log) -> dict:
    run = RunDir(out / name)
    if run.is_finished() and not overwrite:
        if run.read_config() != to_dict(config):
            raise UserError(f"{run.path} holds a different finished run; choose another --out or pass --overwrite")
        log(f"{name}: reusing the finished run in {run.path}")
    else:
        log(f"{name}: training ({config.train.epochs} epochs of {config.model.arch} on {config.data.name})")
        fit(config, run.path, overwrite=overwrite, verbose=False)
    return analyze(run.path, device=config.train.device)


def markdown_table(results: dict) -> str:
    head = "| model | " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 1) + "|"
    rows = [f"| {name} | " + " | ".join(f"{r[key]:.3f}" for key, _ in COLUMNS) + " |" for name, r in results.items()]
    return "\n".join([head, rule, *rows])


def demo(out="runs/demo", seed: int = 0, overrides: dict | None = None, overwrite: bool = False,
         log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Train and measure the four models; writes the runs and `summary.json` under `out`."""
    out = Path(out)
    results = {}
    for name, head in MODELS.items():
        config = make_config(DIGITS, {"seed": seed}, head, overrides or {})
        results[name] = _run_one(name, config, out, overwrite, log)
    keep = ("acc", "spearman_rho", "spearman_p", "mean_cos_to_predicted", "class_vector_cos_max", "num_images")
    summary = {"dataset": "digits", "seed": seed, "n_seeds": 1, "runs": {k: str(out / k) for k in MODELS},
               "results": {name: {k: r[k] for k in keep} for name, r in results.items()}}
    write_json(out / "summary.json", summary)
    return summary
