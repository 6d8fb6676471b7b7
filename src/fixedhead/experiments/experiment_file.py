"""Experiment files: read strictly, checked section by section, `base_from` resolved, --seeds and --set applied.

An experiment file (YAML) holds:
  base:      config overrides for every run (nested or dotted keys)
  base_from: another experiment file whose base this one starts from (a path relative to this file, or
             the name of a shipped one such as speed/cpu-fast); this file's base wins key by key
  grid:      key -> list of values; every combination is run
  variants:  name -> overrides (optional): e.g. the paper's four heads, each with its own lr
  seeds:     a count n (seeds 0..n-1) or a list
  after:     [analyze, robustness]: measurements made once a run has finished
  robustness: options of `fixedhead robustness` (corruptions, severities, preset, generalization)
  report:    rows / columns / metrics / compare: [[column, column(, margin)], ...] (see report.py)
The sweep (sweep.py) turns the loaded experiment into runs.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..config import MAX_SEED
from ..errors import UserError, shown
from ..files import read_yaml

EXPERIMENT_KEYS = {"name", "description", "base", "base_from", "grid", "variants", "seeds", "after", "robustness",
                   "report", "paper", "source"}  # source: where the sweep read it (in the copy it leaves in --out)
AFTER = ("analyze", "robustness")
MAX_SEEDS = 10_000

# What report.select may choose by: validation metrics only (a choice is never made on test), +1 where higher
# is better, -1 where lower is. A tie on one goes to the better value of the other.
SELECT_BY = {"val_acc": 1, "val_loss": -1}

ROBUSTNESS_OPTIONS = {"corruptions": list, "severities": list, "preset": str, "seed": int, "generalization": list}
REPORT_OPTIONS = {"title": str, "rows": list, "columns": list, "metrics": list, "compare": list, "select": dict,
                  "curve": bool}


def _check_section(value, kind, where: str):
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        names = {dict: "a mapping", list: "a list", str: "text"}
        wanted = " or ".join(names.get(k, f"a {k.__name__}") for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise UserError(f"{where} must be {wanted}, found {shown(value)}")
    return value


def check_experiment(tree, path) -> dict:
    """An experiment file's sections with the types the sweep and the report read; else one error."""
    if not isinstance(tree, dict):
        raise UserError(f"{path} must hold a mapping (base, grid, variants, seeds, ...)")
    unknown = sorted(str(k) for k in set(tree) - EXPERIMENT_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {shown(unknown[0])}; an experiment file has: "
                        f"{', '.join(sorted(EXPERIMENT_KEYS))}")
    sections = {"name": str, "description": str, "source": str, "base": dict, "base_from": str, "grid": dict,
                "variants": dict,
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
        _check_report(report, path)
    _check_paper(tree.get("paper") or {}, path)
    return tree


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _check_report(report: dict, path) -> None:
    """One report layout, as strictly as the report reads it: names, [column, column] pairs, a selection on
    validation metrics only."""
    for key in ("rows", "columns", "metrics"):
        if any(not isinstance(item, str) for item in report.get(key) or []):
            raise UserError(f"{path}: report.{key} must be a list of names (config keys, variant, metrics)")
    if any(not (isinstance(p, list) and len(p) in (2, 3) and all(isinstance(c, str) for c in p[:2])
                and (len(p) == 2 or (_number(p[2]) and 0 < p[2] < 1e6)))
           for p in report.get("compare") or []):
        raise UserError(f"{path}: report.compare must be a list of [column, column] pairs, each with an optional "
                        "margin: [column, column, MARGIN] (a positive number in the metric's units)")
    select = report.get("select")
    if select is not None and not ({"key", "by"} <= set(select) <= {"key", "by", "per"}
                                   and select.get("per", "cell") in ("cell", "row") and select["by"] in SELECT_BY
                                   and isinstance(select["key"], str)):
        raise UserError(f"{path}: report.select must be {{key: CONFIG_KEY, by: {'|'.join(SELECT_BY)}[, per: cell|row]}} "
                        "(chosen on validation, never on test)")


def _check_paper(paper: dict, path) -> None:
    """paper: {metric: {"row | column": number}}: the paper's numbers shown beside ours."""
    for metric, cells in paper.items():
        if not isinstance(metric, str) or not isinstance(cells, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in cells.items()):
            raise UserError(f"{path}: paper must map each metric to {{\"row | column\": number}}, found "
                            f"{shown({metric: cells})}")


def report_layouts(tree: dict) -> list:
    """The experiment's report section as a list of layouts (a single mapping is one layout)."""
    report = tree.get("report")
    return [] if report is None else report if isinstance(report, list) else [report]


PACKAGED = Path(__file__).parents[1] / "configs"  # the experiment files that ship with fixedhead


def shipped(name: str) -> Path | None:
    """The shipped experiment file `name` names (`paper/table1`, or `configs/paper/table1.yaml` as the docs
    write it), or None; a name cannot climb out of the shipped folder."""
    short = name.removeprefix("configs/").removesuffix(".yaml")
    packaged = PACKAGED / f"{short}.yaml"
    return packaged if ".." not in Path(short).parts and packaged.is_file() else None


def experiment_file(name) -> Path:
    """A path to an experiment file, or the name of one that ships with fixedhead: `paper/table1`
    (`configs/paper/table1.yaml`, as the docs write it, works from any folder too)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = shipped(str(name))
    if packaged is not None:
        return packaged
    if path.exists():
        return path  # not a file: read_yaml says so
    names = sorted(str(p.relative_to(PACKAGED).with_suffix("")) for p in PACKAGED.rglob("*.yaml")
                   if not p.name.startswith("_"))  # _NAME.yaml: a base that files start from, not an experiment
    raise UserError(f"no experiment file {shown(str(name))}; give a path, or the name of one that ships with "
                    f"fixedhead: {', '.join(names)}")


def load_experiment(path, seeds: int | list[int] | None = None, sets: dict | None = None) -> dict:
    """An experiment file with its base inherited, `sets` applied and its seeds resolved: `seeds` a count n
    (seeds 0..n-1) or a list of seeds, overriding the file's."""
    path = experiment_file(path)
    experiment = check_experiment(read_yaml(path, "experiment file"), path)
    experiment["base"] = _inherited_base(experiment, path, [path.resolve()])
    if not experiment.get("grid") and not experiment.get("variants"):
        raise UserError(f"{path}: the grid is empty; give a grid (key: [values]) or variants")
    if isinstance(seeds, int) and not 1 <= seeds <= MAX_SEEDS:
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
    given = list(range(seeds)) if isinstance(seeds, int) else seeds
    experiment["seeds"] = _seeds(experiment.get("seeds", 1) if given is None else given, path)
    return experiment


def _seeds(value, path) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SEEDS:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and
                                                 0 <= v <= MAX_SEED for v in value):
        return value
    raise UserError(f"{path}: seeds must be a count in 1..{MAX_SEEDS} or a list of integers in 0..{MAX_SEED}, "
                    f"got {shown(value)}")


MAX_BASE_DEPTH = 8  # base_from chains longer than this are a mistake, not a design


def _inherited_base(experiment: dict, path: Path, chain: list[Path]) -> dict:
    """The file's base over the bases it names through base_from (popped: the sweep's record is whole)."""
    base = experiment.get("base") or {}
    parent_name = experiment.pop("base_from", None)
    if parent_name is None:
        return base
    parent_path = _base_file(parent_name, path)
    if parent_path.resolve() in chain or len(chain) >= MAX_BASE_DEPTH:
        names = " -> ".join(str(p) for p in [*chain, parent_path])
        raise UserError(f"{path}: base_from goes round in a circle or deeper than {MAX_BASE_DEPTH} files: {names}")
    parent = check_experiment(read_yaml(parent_path, "experiment file"), parent_path)
    return {**_inherited_base(parent, parent_path, [*chain, parent_path.resolve()]), **base}


def _base_file(name: str, path: Path) -> Path:
    """base_from: a path relative to the file that names it (never to the working folder), or a shipped name."""
    beside = path.parent / name
    if beside.is_file():
        return beside
    packaged = shipped(name)
    if packaged is not None:
        return packaged
    raise UserError(f"{path}: base_from {shown(name)} is neither a file beside it nor a shipped experiment "
                    "(e.g. speed/cpu-fast)")


def recipe(name) -> dict:
    """The one run an experiment file describes (`speed/cpu-fast`, or a path): its base, base_from resolved,
    with its one variant, as dotted config keys; a file with a grid or several variants is not one run."""
    experiment = load_experiment(name)
    variants = list((experiment.get("variants") or {"": {}}).values())
    if experiment.get("grid") or len(variants) != 1:
        raise UserError(f"{name} describes several runs (a grid or {len(variants)} variants); run it with "
                        f"fixedhead sweep {name}, or give a file of one run (e.g. speed/cpu-fast)")
    return {**experiment["base"], **(variants[0] or {})}


def is_experiment(tree) -> bool:
    """Whether a YAML tree is an experiment file rather than a plain config (seed, data, model, train)."""
    return isinstance(tree, dict) and bool({"base", "base_from", "variants", "grid"} & set(tree))
