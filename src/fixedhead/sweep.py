"""Experiment files -> runs: grid expansion, deterministic names, shards, skip finished, resume the rest.

An experiment file (YAML) holds:
  base:      config overrides for every run (nested or dotted keys)
  grid:      key -> list of values; every combination is run
  variants:  name -> overrides (optional): e.g. the paper's four heads, each with its own lr
  seeds:     a count n (seeds 0..n-1) or a list
  after:     [analyze, evaluate]: measurements made once a run has finished
  evaluate:  options of `fixedhead evaluate` (corruptions, severities, preset, generalization)
  report:    rows / columns / metrics / compare (see report.py)
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import make_config, read_yaml
from .errors import UserError
from .evaluate import resolve_device
from .runs import RunDir, atomic_write, write_json

EXPERIMENT_KEYS = {"name", "description", "base", "grid", "variants", "seeds", "after", "evaluate", "report", "paper"}
AFTER = ("analyze", "evaluate")


@dataclass(frozen=True)
class PlannedRun:
    name: str
    overrides: dict  # dotted key -> value, applied after `base`
    variant: str = ""


def load_experiment(path, seeds: int | None = None, sets: dict | None = None) -> dict:
    experiment = read_yaml(path)
    unknown = sorted(set(experiment) - EXPERIMENT_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; an experiment file has: {', '.join(sorted(EXPERIMENT_KEYS))}")
    grid = experiment.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise UserError(f"{path}: grid must map config keys to non-empty lists of values")
    if not grid and not experiment.get("variants"):
        raise UserError(f"{path}: the grid is empty; give a grid (key: [values]) or variants")
    bad_after = [a for a in experiment.get("after", []) if a not in AFTER]
    if bad_after:
        raise UserError(f"{path}: unknown step {bad_after[0]!r} in after; choose from: {', '.join(AFTER)}")
    experiment["base"] = {**(experiment.get("base") or {}), **(sets or {})}
    experiment["seeds"] = list(range(seeds)) if seeds is not None else _seeds(experiment.get("seeds", 1), path)
    return experiment


def _seeds(value, path) -> list[int]:
    if isinstance(value, int) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and v >= 0 for v in value):
        return value
    raise UserError(f"{path}: seeds must be a count >= 1 or a list of integers >= 0, got {value!r}")


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value).lower()).strip("-") or "x"


def expand(experiment: dict) -> list[PlannedRun]:
    """Every (variant, grid point, seed) as a run with a readable name; each config is validated now."""
    grid = experiment.get("grid") or {}
    variants = experiment.get("variants") or {"": {}}
    short = ["data" if key == "data.name" else key.split(".")[-1] for key in grid]
    labels = short if len(set(short)) == len(short) else [key.replace(".", "-") for key in grid]
    runs = []
    for variant, overrides in variants.items():
        for values in itertools.product(*grid.values()):
            for seed in experiment["seeds"]:
                parts = ([_slug(variant)] if variant else []) + [f"{label}={_slug(v)}" for label, v in zip(labels, values)]
                name = "__".join(parts + [f"seed={seed}"])
                run = PlannedRun(name, {**(overrides or {}), **dict(zip(grid, values)), "seed": seed}, variant)
                make_config(experiment["base"], run.overrides)  # fail before any run starts
                runs.append(run)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise UserError("two runs of this experiment get the same name; make the grid values distinct")
    return sorted(runs, key=lambda r: r.name)


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' with 1 <= i <= n; None means the whole sweep (1/1)."""
    if text is None:
        return 1, 1
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise UserError(f"--shard takes i/n with 1 <= i <= n (e.g. 2/4), got {text!r}")
    return int(match[1]), int(match[2])


def shard(runs: list[PlannedRun], index: int, count: int) -> list[PlannedRun]:
    """Every count-th run starting at index-1: shards are disjoint and together complete."""
    return runs[index - 1::count]


def _after(run_dir: Path, experiment: dict, log) -> None:
    from .analysis import analyze
    from .robustness import evaluate_suite

    run = RunDir(run_dir)
    if "analyze" in experiment.get("after", []) and not (run.file("analysis") / "analysis.json").exists():
        analyze(run_dir)
    if "evaluate" in experiment.get("after", []) and not run.file("evaluation.json").exists():
        options = experiment.get("evaluate") or {}
        evaluate_suite(run_dir, **{k: v for k, v in options.items() if k in {"corruptions", "severities", "preset",
                                                                               "seed", "generalization"}})


def run_sweep(path, out, seeds: int | None = None, sets: dict | None = None, shard_spec: str | None = None,
              dry_run: bool = False, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Run (or list) this shard's runs; finished runs are skipped, interrupted ones resumed, failures
    recorded and passed over. Returns {"planned", "finished", "skipped", "failed"} run names."""
    from .train import fit

    experiment = load_experiment(path, seeds, sets)
    planned = shard(expand(experiment), *parse_shard(shard_spec))
    summary = {"planned": [r.name for r in planned], "finished": [], "skipped": [], "failed": []}
    if dry_run:
        for run in planned:
            log(f"{run.name}  {run.overrides}")
        return summary
    _check_devices({make_config(experiment["base"], run.overrides).train.device for run in planned})
    out = Path(out)
    resolved = yaml.safe_dump({**experiment, "source": str(path)}, sort_keys=False)
    atomic_write(out / "experiment.yaml", lambda f: f.write(resolved.encode()))
    for number, run in enumerate(planned, 1):
        run_dir = RunDir(out / run.name)
        try:
            if run_dir.is_finished():
                summary["skipped"].append(run.name)
            else:
                log(f"[{number}/{len(planned)}] {run.name}")
                run_dir.write_sweep_info({"variant": run.variant, "overrides": run.overrides})
                fit(make_config(experiment["base"], run.overrides), run_dir.path, resume=True, verbose=False)
                summary["finished"].append(run.name)
            _after(run_dir.path, experiment, log)
        except (UserError, RuntimeError, ValueError) as error:  # one run's failure does not stop the sweep
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            log(f"{run.name} failed: {message}")
            write_json(run_dir.file("failure.json"), {"error": message, "traceback": traceback.format_exc()})
            summary["failed"].append(run.name)
    return summary


def _check_devices(devices) -> None:
    """A device this machine lacks is one error before anything starts, not a failure in every run."""
    for device in sorted(devices):
        resolve_device(device)


def run_parallel(path, out, devices: list[str], seeds: int | None = None, sets: dict | None = None,
                 log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """One worker process per device, each running the shard i/n of the sweep on its device
    (e.g. devices cuda:0,cuda:1,...: one run per GPU at a time). Returns the merged summary."""
    expand(load_experiment(path, seeds, sets))  # refuse a bad file before starting any worker
    _check_devices(devices)
    workers = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, device in enumerate(devices, 1):
            summary_path = Path(tmp) / f"summary-{index}.json"
            command = [sys.executable, "-m", "fixedhead", "sweep", str(path), "--out", str(out),
                       "--shard", f"{index}/{len(devices)}", "--set", f"train.device={device}",
                       "--summary", str(summary_path)]
            command += [item for key, value in (sets or {}).items() for item in ("--set", f"{key}={value}")]
            command += ["--seeds", str(seeds)] if seeds is not None else []
            log(f"worker {index}/{len(devices)} on {device}")
            workers.append((subprocess.Popen(command), summary_path))
        merged = {"planned": [], "finished": [], "skipped": [], "failed": []}
        for process, summary_path in workers:
            process.wait()
            if summary_path.exists():
                for key, names in json.loads(summary_path.read_text()).items():
                    merged[key] += names
    return merged
