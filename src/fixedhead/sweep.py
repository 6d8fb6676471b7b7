"""Experiment files -> runs: grid expansion, deterministic names, shards, skip finished, resume the rest.

An experiment file (YAML) holds:
  base:      config overrides for every run (nested or dotted keys)
  grid:      key -> list of values; every combination is run
  variants:  name -> overrides (optional): e.g. the paper's four heads, each with its own lr
  seeds:     a count n (seeds 0..n-1) or a list
  after:     [analyze, robustness]: measurements made once a run has finished
  robustness: options of `fixedhead robustness` (corruptions, severities, preset, generalization)
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

from .accepted import MAX_SEED
from .config import PLACE_KEYS, differences, make_config, saved_config
from .devices import EMULATED_BF16, emulated_bf16, resolve_device
from .errors import UserError, reason, shown
from .files import read_yaml
from .runs import SELECT_BY, RunDir, RunInUse, SweepDir

EXPERIMENT_KEYS = {"name", "description", "base", "grid", "variants", "seeds", "after", "robustness", "report", "paper",
                   "source"}  # source: where the sweep read it (in the copy it leaves in --out)
AFTER = ("analyze", "robustness")
RENAMED = {"evaluate": "robustness"}  # old experiment-file word -> new one
MAX_SEEDS = 10_000


@dataclass(frozen=True)
class PlannedRun:
    name: str
    overrides: dict  # dotted key -> value, applied after `base`
    variant: str = ""


ROBUSTNESS_OPTIONS = {"corruptions": list, "severities": list, "preset": str, "seed": int, "generalization": list}
REPORT_OPTIONS = {"title": str, "rows": list, "columns": list, "metrics": list, "compare": list, "select": dict,
                  "curve": bool}


def _check_section(value, kind, where: str):
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        names = {dict: "a mapping", list: "a list"}
        wanted = " or ".join(names.get(k, f"a {k.__name__}") for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise UserError(f"{where} must be {wanted}, found {shown(value)}")
    return value


def check_experiment(tree, path) -> dict:
    """An experiment file's sections with the types the sweep and the report read; else one error."""
    if not isinstance(tree, dict):
        raise UserError(f"{path} must hold a mapping (base, grid, variants, seeds, ...)")
    after = tree.get("after") if isinstance(tree.get("after"), list) else []
    old = [word for word in RENAMED if word in tree or word in after]
    if old:
        raise UserError(f"{path}: '{old[0]}' was renamed '{RENAMED[old[0]]}' (in after: and as a section)")
    unknown = sorted(str(k) for k in set(tree) - EXPERIMENT_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {shown(unknown[0])}; an experiment file has: "
                        f"{', '.join(sorted(EXPERIMENT_KEYS))}")
    sections = {"name": str, "description": str, "source": str, "base": dict, "grid": dict, "variants": dict,
                "after": list, "robustness": dict, "report": (dict, list), "paper": dict}
    for key, kind in sections.items():
        _check_section(tree.get(key), kind, f"{path}: {key}")
    for report in report_layouts(tree):
        _check_section(report, dict, f"{path}: each report in the report list")
    grid = tree.get("grid") or {}
    if any(not isinstance(v, list) or not v for v in grid.values()):
        raise UserError(f"{path}: grid must map config keys to non-empty lists of values")
    for name, overrides in (tree.get("variants") or {}).items():
        _check_section(overrides, dict, f"{path}: variant {shown(name)}")
    bad_after = [a for a in tree.get("after") or [] if a not in AFTER]
    if bad_after:
        raise UserError(f"{path}: unknown step {shown(bad_after[0])} in after; choose from: {', '.join(AFTER)}")
    for section, tree_part, options in [("robustness", tree.get("robustness"), ROBUSTNESS_OPTIONS),
                                        *(("report", r, REPORT_OPTIONS) for r in report_layouts(tree))]:
        for key, value in (tree_part or {}).items():
            if key not in options:
                raise UserError(f"{path}: unknown key {shown(key)} in {section}; accepted: {', '.join(options)}")
            _check_section(value, options[key], f"{path}: {section}.{key}")
    for report in report_layouts(tree):
        if any(not (isinstance(p, list) and len(p) == 2) for p in report.get("compare") or []):
            raise UserError(f"{path}: report.compare must be a list of [column, column] pairs")
        select = report.get("select")
        if select is not None and not ({"key", "by"} <= set(select) <= {"key", "by", "per"}
                                       and select.get("per", "cell") in ("cell", "row") and select["by"] in SELECT_BY):
            raise UserError(f"{path}: report.select must be {{key: CONFIG_KEY, by: {'|'.join(SELECT_BY)}[, per: cell|row]}} "
                            "(chosen on validation, never on test)")
    return tree


def report_layouts(tree: dict) -> list:
    """The experiment's report section as a list of layouts (a single mapping is one layout)."""
    report = tree.get("report")
    return [] if report is None else report if isinstance(report, list) else [report]


PACKAGED = Path(__file__).parent / "configs"  # the experiment files that ship with fixedhead


def experiment_file(name) -> Path:
    """A path to an experiment file, or the name of one that ships with fixedhead: `paper/table1`
    (`configs/paper/table1.yaml`, as the docs write it, works from any folder too)."""
    path = Path(name)
    if path.is_file():
        return path
    short = str(name).removeprefix("configs/").removesuffix(".yaml")
    packaged = PACKAGED / f"{short}.yaml"
    if ".." not in Path(short).parts and packaged.is_file():
        return packaged
    if path.exists():
        return path  # not a file: read_yaml says so
    names = sorted(str(p.relative_to(PACKAGED).with_suffix("")) for p in PACKAGED.rglob("*.yaml"))
    raise UserError(f"no experiment file {shown(str(name))}; give a path, or the name of one that ships with "
                    f"fixedhead: {', '.join(names)}")


def load_experiment(path, seeds: int | None = None, sets: dict | None = None) -> dict:
    path = experiment_file(path)
    experiment = check_experiment(read_yaml(path, "experiment file"), path)
    if not experiment.get("grid") and not experiment.get("variants"):
        raise UserError(f"{path}: the grid is empty; give a grid (key: [values]) or variants")
    if seeds is not None and not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"--seeds takes a number of seeds in 1..{MAX_SEEDS}, got {seeds}")
    sets = dict(sets or {})
    grid = experiment.get("grid") or {}
    for key in [k for k in sets if k in grid]:  # the grid would override it: restrict the grid instead
        values = [yaml.safe_load(v) if v.strip() else v for v in str(sets.pop(key)).split(",")]
        if any(isinstance(v, (dict, list)) for v in values):
            raise UserError(f"--set {key}=... on a grid key takes plain values, comma-separated")
        grid[key] = values
    varied = sorted({k for overrides in (experiment.get("variants") or {}).values() for k in (overrides or {})} & set(sets))
    if varied:
        raise UserError(f"--set {varied[0]} would be overridden by the variants of {path}, which set it; "
                        "edit the file or choose variants there")
    experiment["base"] = {**(experiment.get("base") or {}), **sets}
    experiment["seeds"] = list(range(seeds)) if seeds is not None else _seeds(experiment.get("seeds", 1), path)
    return experiment


def _seeds(value, path) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SEEDS:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and
                                                 0 <= v <= MAX_SEED for v in value):
        return value
    raise UserError(f"{path}: seeds must be a count in 1..{MAX_SEEDS} or a list of integers in 0..{MAX_SEED}, "
                    f"got {shown(value)}")


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
    if not run.has_model():  # stopped by a non-finite loss: nothing to measure
        return
    if "analyze" in experiment.get("after", []) and not run.analysis_path.exists():
        analyze(run_dir)
    if "robustness" in experiment.get("after", []) and not run.evaluation_path.exists():
        options = experiment.get("robustness") or {}
        evaluate_suite(run_dir, **{k: v for k, v in options.items() if k in {"corruptions", "severities", "preset",
                                                                               "seed", "generalization"}})


def run_sweep(path, out, seeds: int | None = None, sets: dict | None = None, shard_spec: str | None = None,
              dry_run: bool = False, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Run (or list) this shard's runs; finished runs are skipped, interrupted ones resumed, failures
    recorded and passed over. Returns {"planned", "finished", "skipped", "failed", "busy"} run names; a dry
    run trains nothing and returns "overrides" too, each planned run's, in order."""
    from .trackers import Progress
    from .train import fit

    experiment = load_experiment(path, seeds, sets)
    planned = shard(expand(experiment), *parse_shard(shard_spec))
    summary = {"planned": [r.name for r in planned], "finished": [], "skipped": [], "failed": [], "busy": []}
    if dry_run:
        return {**summary, "overrides": [run.overrides for run in planned]}
    configs = [make_config(experiment["base"], run.overrides) for run in planned]
    _check_devices({config.train.device for config in configs})
    sweep_dir = SweepDir(out)
    finished = [_finished(sweep_dir.run(run.name)) for run in planned]
    _check_kept(sweep_dir, [(r, c) for r, c, done in zip(planned, configs, finished) if done])
    to_train = [c for c, done in zip(configs, finished) if not done]
    _check_data(to_train)
    note = emulated_bf16_note(to_train)
    if note:
        log(note)
    sweep_dir.write_experiment({**experiment, "source": str(path)})
    for number, (run, config) in enumerate(zip(planned, configs), 1):
        run_dir = sweep_dir.run(run.name)
        try:
            if run_dir.is_finished():  # kept: _check_kept found it trained with this config
                summary["skipped"].append(run.name)
            else:
                log(f"[{number}/{len(planned)}] {run.name}")
                run_dir.write_sweep_info({"variant": run.variant, "overrides": run.overrides})
                total = None if config.train.images_seen else config.train.epochs  # a budget: known once data is read
                progress = Progress(f"[{number}/{len(planned)}] {run.name}", total, log)
                fit(config, run_dir.path, resume=True, verbose=False, callbacks=[progress])
                summary["finished"].append(run.name)
            _after(run_dir.path, experiment, log)
        except RunInUse as error:  # another sweep or train is on it: not a failure of the run, leave it alone
            log(f"{run.name} skipped: {error}")
            summary["busy"].append(run.name)
        except (UserError, RuntimeError, ValueError) as error:  # one run's failure does not stop the sweep
            message = reason(error, 500)
            log(f"{run.name} failed: {message}")
            run_dir.write_failure({"error": message, "traceback": traceback.format_exc()})
            summary["failed"].append(run.name)
    return summary


def _finished(run_dir: RunDir) -> bool:
    """is_finished, with a damaged final.json counted as not (the run's own turn reports it)."""
    try:
        return run_dir.is_finished()
    except UserError:
        return False


def _stale(run_dir: RunDir, config) -> str | None:
    """Why a finished run cannot stand for this experiment's run (trained with another config), or None:
    an edited experiment file must not silently keep the results of the old one."""
    changed = [k for k in differences(saved_config(run_dir.read_config()), config) if k not in PLACE_KEYS]
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
    from .data import check_available

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
        merged = {"planned": [], "finished": [], "skipped": [], "failed": [], "busy": []}
        for process, summary_path in workers:
            process.wait()
            if summary_path.exists():
                for key, names in json.loads(summary_path.read_text()).items():
                    merged[key] += names
    return merged
