"""The paper's four models (dot/cosine S=1, learned/fixed) trained, measured and read side by side.

The demo is an experiment file (configs/demo/) run by the sweep and the report, then read against the
paper's claims. On Fashion-MNIST (look-alike classes: the paper's situation): the full set when it is on this
machine, else the subset shipped with the package (data/mini.py). scikit-learn's digits (--data digits) is a
smoke test, not evidence: every model learns it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .. import plots, tables
from ..data import idx, mini
from ..errors import UserError
from ..evaluation.analysis import load_or_analyze
from ..evaluation.trained import correct_on_test
from ..runs import SweepDir
from .report import write_report
from .statistics import mcnemar_exact
from .sweep import run_sweep

MODELS = ("dot-learned", "dot-fixed", "cosine-learned", "cosine-fixed")  # the variants of every demo file
DEMOS = {"digits": "demo/digits", mini.NAME: "demo/fashion-mnist-mini", "fashion-mnist": "demo/fashion-mnist"}

TITLES = {mini.NAME: f"{mini.NAME}, the embedded subset of Fashion-MNIST ({mini.describe()})",
          "fashion-mnist": "Fashion-MNIST"}

ALPHA = 0.05  # McNemar's exact test: a gap is read (held / reversed) only at p below this

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
    if data not in DEMOS:
        raise UserError(f"unknown demo dataset {data!r}; choose one of: auto, {', '.join(DEMOS)}")
    if data == "fashion-mnist" and idx.locate("fashion-mnist", data_dir) is None:
        from ..data.download import download

        log(f"downloading Fashion-MNIST into {data_dir or 'data'}")
        download("fashion-mnist", data_dir or "data")
    return data


def results_table(results: dict) -> str:
    rows = [[name, *(f"{r[key]:.3f}" for key, _ in COLUMNS)] for name, r in results.items()]
    return tables.markdown_table(["model", *(title for _, title in COLUMNS)], rows)


def reading(results: dict, tests: dict) -> list[str]:
    """Plain sentences setting this run's numbers against the paper's claims. `tests`: McNemar's exact test
    (statistics.mcnemar_exact) of the fixed against the learned head, per similarity ("dot", "cosine"), on
    the shared test images: a gap is read only where p < ALPHA."""
    r = {name: results[name] for name in MODELS}
    learned_rho = min(r["dot-learned"]["spearman_rho"], r["cosine-learned"]["spearman_rho"])
    fixed_rho = max(abs(r["dot-fixed"]["spearman_rho"]), abs(r["cosine-fixed"]["spearman_rho"]))
    cos_gain = 100 * (r["cosine-fixed"]["acc"] - r["cosine-learned"]["acc"])
    dot_gain = 100 * (r["dot-fixed"]["acc"] - r["dot-learned"]["acc"])
    held = lambda ok: "held" if ok else "did not hold"

    def gain(points, test):
        p = f"McNemar's exact p = {test['p']:.2g}"
        return f"{held(points > 0)} ({p})" if test["p"] < ALPHA else f"not told apart on these images ({p})"

    return [
        f"Learned class vectors encode class similarity (paper: Spearman 0.61-0.87): {held(learned_rho > fixed_rho + 0.2)} "
        f"here, rho = {r['dot-learned']['spearman_rho']:.2f} (dot) and {r['cosine-learned']['spearman_rho']:.2f} "
        f"(cosine) for learned heads against at most {fixed_rho:.2f} in size for fixed ones.",
        f"A fixed cosine head with S=1 trains better than a learned one (paper: up to +53 points): "
        f"{gain(cos_gain, tests['cosine'])} here, {cos_gain:+.1f} points.",
        f"Fixing dot-product class vectors raises accuracy (paper: up to +4 points): {gain(dot_gain, tests['dot'])} "
        f"here, {dot_gain:+.1f} points.",
        f"One seed per model on {r['dot-learned']['num_images']:,} test images: a demonstration, not a measurement. "
        "McNemar's test compares these two trained models on these images; how much another seed moves a "
        "model is not in it (docs/results.md has several seeds with CIs).",
    ]


def _train(dataset: str, folder: SweepDir, seed: int, sets: dict, overwrite: bool, log) -> dict:
    """Run the demo's experiment file into `folder` (finished runs of the same config are reused, as a sweep
    reuses them); {model: its analysis}."""
    if overwrite and folder.path.is_dir():
        for run in folder.runs():
            run.clear()
    summary = run_sweep(DEMOS[dataset], folder.path, seeds=[seed], sets=sets, log=log)
    if summary["failed"] or summary["busy"]:
        raise UserError(f"the demo's runs {', '.join(summary['failed'] + summary['busy'])} did not train (see above)")
    if summary["skipped"]:
        log(f"reusing the finished runs in {folder.path}: {', '.join(summary['skipped'])}")
    runs = {name.split("__")[0]: folder.run(name) for name in summary["planned"]}
    return {model: {**load_or_analyze(runs[model].path), "run": str(runs[model].path),
                    "correct": correct_on_test(runs[model].path)} for model in MODELS}


def demo(out="runs/demo", data: str = "auto", data_dir=None, seed: int = 0, overrides: dict | None = None,
         overwrite: bool = False, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Train, analyse and read the four models; writes the runs, the report, a summary and a reading under `out`."""
    folder = SweepDir(out)
    dataset = choose_dataset(data, data_dir, log)
    sets = {**(overrides or {}), **({"data.data_dir": str(data_dir)} if data_dir else {})}
    results = _train(dataset, folder, seed, sets, overwrite, log)
    tests = {kind: mcnemar_exact(results[f"{kind}-fixed"]["correct"], results[f"{kind}-learned"]["correct"])
             for kind in ("dot", "cosine")}
    write_report(folder.path)
    keep = ("acc", "spearman_rho", "spearman_p", "mean_cos_to_predicted", "class_vector_cos_max", "num_images")
    title = f"The paper's four models on {TITLES.get(dataset, dataset)} (seed {seed}, n = 1 run each, test split)"
    summary: dict[str, Any] = {"dataset": dataset, "title": title, "seed": seed, "n_seeds": 1,
               "runs": {name: r["run"] for name, r in results.items()},
               "results": {name: {k: r[k] for k in keep} for name, r in results.items()},
               "mcnemar": tests, "reading": reading(results, tests)}
    panels = {name: (np.array(r["class_vector_cosine"]), r["classes"]) for name, r in results.items()}
    plots.heatmap_grid(panels, folder.heatmaps)
    folder.write_summary(summary)
    text = (f"# {title}\n\n"
            f"{results_table(summary['results'])}\n\n" + "\n".join(f"- {s}" for s in summary["reading"])
            + f"\n\n![class-vector cosine of the four models]({folder.heatmaps.name}.png)\n")
    folder.write_demo(text)
    return summary
