"""Experiment -> runs: grid expansion, deterministic names, shards, skip finished, resume the rest.

The experiment file's format and its reading live in experiments.py.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..config import PLACE_KEYS, differences, make_config, saved_config
from ..devices import EMULATED_BF16, emulated_bf16, resolve_device
from ..errors import UserError, reason
from ..runs import RunDir, RunInUse, SweepDir
from .experiment_file import load_experiment


@dataclass(frozen=True)
class PlannedRun:
    name: str
    overrides: dict  # dotted key -> value, applied after `base`
    variant: str = ""


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value).lower()).strip("-") or "x"


MAX_RUNS = 10_000  # a sweep's planned runs: far more is a mistake in the file, not a plan


def expand(experiment: dict) -> list[PlannedRun]:
    """Every (variant, grid point, seed) as a run with a readable name; each config is validated now."""
    grid = experiment.get("grid") or {}
    variants = experiment.get("variants") or {"": {}}
    count = len(variants) * math.prod(len(values) for values in grid.values()) * len(experiment["seeds"])
    if count > MAX_RUNS:
        raise UserError(f"the experiment expands to {count:,} runs (variants x grid x seeds), more than {MAX_RUNS:,}; "
                        "narrow the grid, or split it into several files")
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
    from ..evaluation.analysis import analyze
    from ..evaluation.robustness import evaluate_suite

    run = RunDir(run_dir)
    if not run.has_model():  # stopped by a non-finite loss: nothing to measure
        return
    if "analyze" in experiment.get("after", []) and not run.analysis_path.exists():
        analyze(run_dir)
    if "robustness" in experiment.get("after", []) and not run.evaluation_path.exists():
        options = experiment.get("robustness") or {}
        evaluate_suite(run_dir, **{k: v for k, v in options.items() if k in {"corruptions", "severities", "preset",
                                                                               "seed", "generalization"}})


def run_sweep(path, out, seeds: int | list[int] | None = None, sets: dict | None = None, shard_spec: str | None = None,
              dry_run: bool = False, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Run (or list) this shard's runs; finished runs are skipped, interrupted ones resumed, failures
    recorded and passed over. Returns {"planned", "finished", "skipped", "failed", "busy"} run names; a dry
    run trains nothing and returns "overrides" too, each planned run's, in order."""
    experiment = load_experiment(path, seeds, sets)
    planned = shard(expand(experiment), *parse_shard(shard_spec))
    summary = {"planned": [r.name for r in planned], "finished": [], "skipped": [], "failed": [], "busy": []}
    if dry_run:
        return {**summary, "overrides": [run.overrides for run in planned]}
    configs, sweep_dir = start(path, out, experiment, planned, log)
    for number, (run, config) in enumerate(zip(planned, configs), 1):
        status = train_one(run, config, sweep_dir.run(run.name), experiment, f"[{number}/{len(planned)}]", log)
        summary[status].append(run.name)
    return summary


def start(path, out, experiment: dict, planned: list[PlannedRun], log, here: bool = True) -> tuple[list, SweepDir]:
    """Everything checked before the first run trains (devices where `here`, i.e. the runs train on this
    machine; finished runs of another config; the data), experiment.yaml written; the runs' configs."""
    configs = [make_config(experiment["base"], run.overrides) for run in planned]
    if here:
        _check_devices({config.train.device for config in configs})
    sweep_dir = SweepDir(out)
    finished = [_finished(sweep_dir.run(run.name)) for run in planned]
    _check_kept(sweep_dir, [(r, c) for r, c, done in zip(planned, configs, finished) if done])
    to_train = [c for c, done in zip(configs, finished) if not done]
    _check_data(to_train)
    note = emulated_bf16_note(to_train) if here else None
    if note:
        log(note)
    sweep_dir.write_experiment({**experiment, "source": str(path)})
    return configs, sweep_dir


def train_one(run: PlannedRun, config, run_dir: RunDir, experiment: dict, label: str, log) -> str:
    """Train (or resume) one planned run and make its `after` measurements; the status for the summary:
    skipped (finished before), finished, busy (another process holds it) or failed (recorded in
    failure.json). The unit every engine runs: this loop, a Slurm job, a Ray task (cluster.py)."""
    from ..trackers import Progress
    from ..training.fit import fit

    try:
        status = "skipped"
        if not run_dir.is_finished():  # a finished one is kept: _check_kept found it trained with this config
            log(f"{label} {run.name}")
            run_dir.write_sweep_info({"variant": run.variant, "overrides": run.overrides})
            total = None if config.train.images_seen else math.ceil(config.train.epochs)  # a budget: known later
            fit(config, run_dir.path, resume=True, verbose=False, callbacks=[Progress(f"{label} {run.name}", total, log)])
            status = "finished"
        _after(run_dir.path, experiment, log)
        return status
    except RunInUse as error:  # another sweep or train is on it: not a failure of the run, leave it alone
        log(f"{run.name} skipped: {error}")
        return "busy"
    except (UserError, RuntimeError, ValueError) as error:  # one run's failure does not stop the sweep
        message = reason(error, 500)
        log(f"{run.name} failed: {message}")
        run_dir.write_failure({"error": message, "traceback": traceback.format_exc()})
        return "failed"


def _finished(run_dir: RunDir) -> bool:
    """is_finished, with a damaged final.json counted as not (the run's own turn reports it)."""
    try:
        return run_dir.is_finished()
    except UserError:
        return False


def _stale(run_dir: RunDir, config) -> str | None:
    """Why a finished run cannot stand for this experiment's run (trained with another config), or None:
    an edited experiment file must not silently keep the results of the old one."""
    saved = saved_config(run_dir.read_config(), run_dir.config_path, run_dir.version())
    changed = [k for k in differences(saved, config) if k not in PLACE_KEYS]
    if not changed:
        return None
    return f"{run_dir.path.name} was trained with another {changed[0]} ({len(changed)} key(s) differ)"


def _check_kept(sweep_dir: SweepDir, kept) -> None:
    """Finished runs trained with another config stop the whole sweep before anything is trained or written:
    training the file's other runs beside them would leave one folder (and one report) of two settings."""
    stale = [why for why in (_stale(sweep_dir.run(run.name), config) for run, config in kept) if why]
    if stale:
        raise UserError(f"{len(stale)} finished run(s) in {sweep_dir.path} do not match the experiment file "
                        f"({stale[0]}); sweep into another --out, or delete those run folders")


def emulated_bf16_note(configs) -> str | None:
    """A line when runs still to train ask for bf16 autocast on a device that only emulates it (a CPU without bf16
    instructions: several times slower than float32), or None. The shipped experiment files ask for auto
    (never slow); a file or --set saying true would otherwise silently take hours longer there."""
    slow = sum(emulated_bf16(c.train.bf16, resolve_device(c.train.device)) for c in configs)
    if not slow:
        return None
    return (f"note: {slow} of {len(configs)} run(s) to train ask for bf16 autocast: {EMULATED_BF16}; "
            "add --set train.bf16=auto (or false)")


def _check_data(configs) -> None:
    """A dataset that is missing or misnamed is one error before anything starts (exit 2, no run folder
    written), not the same failure recorded in every run."""
    from ..data import check_available

    for data_cfg in {repr(c.data): c.data for c in configs}.values():  # each distinct data section once
        check_available(data_cfg)


def _check_devices(devices) -> None:
    """A device this machine lacks is one error before anything starts, not a failure in every run."""
    for device in sorted(devices):
        resolve_device(device)


def run_parallel(path, out, devices: list[str], seeds: int | None = None, sets: dict | None = None,
                 log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """One worker process per device, each running the shard i/n of the sweep on its device
    (e.g. devices cuda:0,cuda:1,...: one run per GPU at a time). Returns the merged summary."""
    experiment = load_experiment(path, seeds, sets)
    planned = expand(experiment)  # refuse a bad file before starting any worker
    _check_devices(devices)
    _check_data([make_config(experiment["base"], run.overrides) for run in planned
                 if not _finished(SweepDir(out).run(run.name))])
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
        merged: dict[str, list] = {"planned": [], "finished": [], "skipped": [], "failed": [], "busy": []}
        for process, summary_path in workers:
            process.wait()
            if summary_path.exists():
                for key, names in json.loads(summary_path.read_text()).items():
                    merged[key] += names
    return merged
