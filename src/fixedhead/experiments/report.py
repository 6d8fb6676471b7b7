"""Run folders -> tables of mean ± std (n) -> report.md, results.csv, tables.tex and figures.

Reads only what the runs wrote. Layout comes from the sweep's experiment.yaml when present:
  report:
    rows: [data.name, model.arch]       # config keys (or "variant") down the side
    columns: [variant]                  # across the top
    metrics: [test_acc, spearman_rho]   # one table per metric
    compare: [[dot-fixed, dot-learned]] # column pairs: difference with a 95% confidence interval
    select: {key: model.scale, by: val_acc}  # per cell, keep the key value with the best validation mean
  paper: {metric: {"row label | column label": value}}   # the paper's numbers, shown beside ours
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import numpy as np

from ..config import PLACE_KEYS, all_keys, flatten
from ..errors import UserError
from ..files import read_yaml, write_text
from ..runs import FAILED_TO_TRAIN, OUTCOME_RULES, RESULTS, SweepDir, num_classes, outcome, precision
from ..tables import markdown_table
from .experiment_file import SELECT_BY, check_experiment, report_layouts
from .statistics import difference_ci, margin_verdict, mean_ci, paired_difference_ci, summarise


def _is_percent(metric: str) -> bool:
    """Accuracies are shown in %: acc, test_acc, clean_acc, <corruption>_mean_acc, gen_acc[...]."""
    return metric == "acc" or metric.endswith("_acc") or metric.startswith("gen_acc[")


def _axis_label(metric: str) -> str:
    """A metric key as a figure axis label: words, with (%) on accuracies."""
    return metric.replace("_", " ") + (" (%)" if _is_percent(metric) else "")


def _curve_figures(table: dict, figure, factor: float) -> list:
    """A report layout with `curve: true` (one numeric row key, e.g. data.num_classes): each metric
    against it per column, and each compare pair's difference, with 95% CIs; log axis over a decade."""
    from .. import plots

    try:
        xs = {row: float(row) for row in table["rows"]}
    except ValueError:
        raise UserError(f"a report with curve: true needs one numeric row key; got rows {table['rows'][:3]}") from None
    rows = sorted(table["rows"], key=lambda row: xs[row])
    x = [xs[r] for r in rows]
    log_x = min(x) > 0 and max(x) >= 10 * min(x)
    xlabel = ", ".join(table["row_keys"])
    series = {}
    for column in table["columns"]:
        points = [mean_ci(table["cells"][row].get(column)) for row in rows]
        series[column or "all"] = tuple([factor * p[i] for p in points] for i in range(3))
    figures = [plots.curves({k: (x, *v) for k, v in series.items()}, figure(""), xlabel, _axis_label(table["metric"]),
                            log_x)]
    for pair, by_row in table["diffs"].items():
        kept = [r for r in rows if r in by_row]
        values = [tuple(factor * by_row[r][k] for k in ("diff", "low", "high")) for r in kept]
        figures.append(plots.curves({pair: ([xs[r] for r in kept], *zip(*values))} if kept else {},
                                    figure("_" + re.sub(r"[^A-Za-z0-9]+", "_", pair).strip("_")),
                                    xlabel, f"{_axis_label(table['metric'])}: {pair}", log_x, zero_line=True,
                                    title="difference of means, error bars: 95% Welch confidence interval"))
    return figures


def collect(root) -> list[dict]:
    """One flat record per run folder under `root`: config keys, variant, final, analysis, evaluation."""
    records = []
    for run in SweepDir(root).runs():
        final = run.final() or {}
        record = {"run": run.path.name, "status": final.get("status", "unfinished"), **flatten(run.read_config())}
        record["variant"] = str(run.read_sweep_info().get("variant", ""))
        meta = run.read_meta()
        record["precision"] = precision(meta) or "not recorded"
        record.update({k: v for k, v in final.items() if isinstance(v, (int, float)) and k != "seed"})
        losses = final.get("train_losses")
        if isinstance(losses, list) and losses and all(isinstance(v, (int, float)) for v in losses):
            record["train_loss"] = losses[-1]  # the last epoch's mean training loss (one of runs.outcome's)
            end = final.get("train_loss_end")
            if record["status"] in RESULTS:  # today's rule, also for runs trained under an older one
                end = end if isinstance(end, (int, float)) and not isinstance(end, bool) else None
                record["status"] = outcome(tuple(losses), end, num_classes(meta))
        analysis = run.read_analysis() or {}
        record.update({k: v for k, v in analysis.items() if isinstance(v, (int, float)) and k != "acc"})
        evaluation = run.read_evaluation() or {}
        if evaluation:
            record.update(_robustness_metrics(evaluation))
        records.append(record)
    return records


def _robustness_metrics(evaluation: dict) -> dict:
    """Clean accuracy, and per corruption (mean over severities) and generalisation set both the absolute
    accuracy and the retained accuracy (that accuracy / clean accuracy): a head can lose on one and win
    on the other."""
    clean = evaluation["clean_acc"]
    retained = (lambda acc: acc / clean) if clean else (lambda acc: float("nan"))
    out = {"clean_acc": clean}
    for name, entry in evaluation["corruptions"].items():
        out[f"{name}_mean_acc"], out[f"{name}_retained"] = entry["mean_acc"], retained(entry["mean_acc"])
    for spec, entry in evaluation["generalization"].items():
        out[f"gen_acc[{spec}]"], out[f"gen_retained[{spec}]"] = entry["acc"], retained(entry["acc"])
    return out


def _row_order(row: str):
    """Numbers in numeric order (10 before 100), then text."""
    try:
        return (0, float(row), "")
    except ValueError:
        return (1, 0.0, row)


def _label(record: dict, keys: list[str]) -> str:
    return ", ".join(str(record.get(k, "")) for k in keys) or "all"


def select_runs(records: list[dict], layout: dict) -> list[dict]:
    """With layout["select"] = {key, by}: in each table cell keep only the runs whose `key` value has
    the best mean `by` (a validation metric), e.g. the scale S with the best validation accuracy. With
    per: row, one value per row, by the mean over all its columns: e.g. one learning rate for both the
    fixed and the learned head (a matched comparison)."""
    choice = layout.get("select")
    if not choice:
        return records
    key, by = choice["key"], choice["by"]
    if by not in SELECT_BY:  # experiment.yaml is read from the run folder: checked here, not only by the sweep
        raise UserError(f"report.select chooses by {by!r}; accepted: {', '.join(SELECT_BY)} (validation metrics: "
                        "nothing is chosen on test)")
    missing = [r["run"] for r in records if not isinstance(r.get(by), (int, float))]
    if missing:
        raise UserError(f"report.select chooses {key} by {by!r}, but {len(missing)} finished run(s) lack it "
                        f"(e.g. {missing[0]}); train them with a validation split (data.val_fraction) or choose "
                        "another 'by'")
    per_row = choice.get("per", "cell") == "row"  # row: one value for the whole row (matched columns)
    groups: dict = {}
    for record in records:
        cell = (_label(record, layout["rows"]), "" if per_row else _label(record, layout["columns"]))
        groups.setdefault(cell, {}).setdefault(record.get(key), []).append(record)
    kept = []
    for candidates in groups.values():
        kept += candidates[_best(candidates, by)]
    return kept


def _other(by: str) -> str:
    return next(key for key in SELECT_BY if key != by)


def _best(candidates: dict, by: str):
    """The value whose runs have the best mean `by`; among values tied on it, the best mean of the other
    validation metric where every tied run has one (else the first listed)."""
    def score(value, key: str) -> float:
        return SELECT_BY[key] * float(np.mean([r[key] for r in candidates[value]]))

    scores = {v: score(v, by) for v in candidates}
    top = max(scores.values())
    tied = [v for v, s in scores.items() if math.isclose(s, top, rel_tol=1e-9, abs_tol=1e-12)]
    other = _other(by)
    if len(tied) > 1 and all(isinstance(r.get(other), (int, float)) for v in tied for r in candidates[v]):
        return max(tied, key=lambda v: score(v, other))
    return tied[0]


def selection_note(choice: dict, all_runs: str) -> str:
    """The sentence that tells a reader which runs a selecting report shows (`all_runs`: where the rest are)."""
    where = "in each row, one value for all columns, by the mean over them" if choice.get("per") == "row" else "in each cell"
    other = _other(choice["by"])
    better = "higher" if SELECT_BY[other] > 0 else "lower"
    return (f"Selected on validation: {where}, the {choice['key']} with the best mean {choice['by']} over its seeds "
            f"(a tie: the {better} mean {other}); the tables show those runs only (the others are in {all_runs}).")


def cell_runs(records: list[dict], layout: dict) -> dict:
    """The finished runs the tables show (after the layout's selection), by cell (row label, column label)."""
    cells: dict = {}
    for record in select_runs([r for r in records if r["status"] == "finished"], layout):
        cells.setdefault((_label(record, layout["rows"]), _label(record, layout["columns"])), []).append(record)
    return cells


def mixed_cells(cells: dict, layout: dict) -> list[str]:
    """Cells (from cell_runs) whose runs differ in a setting other than the seed, the place keys and the
    layout's own keys (runs kept from an earlier experiment file, or a grid key the layout pools over), or
    in the precision they computed in (train.bf16 auto on two machines): one line per cell, naming the
    keys and their values, so that a mean over unlike runs is never silent."""
    same = {*all_keys(), "precision"} - {"seed", *PLACE_KEYS, *layout["rows"], *layout["columns"]}
    lines = []
    for (row, column), runs in sorted(cells.items()):
        keys = sorted(k for k in same if len({repr(r.get(k)) for r in runs}) > 1)
        values = (f"{k} = {' / '.join(sorted({str(r.get(k)) for r in runs}))}" for k in keys)
        lines += [f"{row} | {column}: {'; '.join(values)}"] if keys else []
    return lines


def build_tables(records: list[dict], layout: dict, paper: dict | None = None, by_cell: dict | None = None) -> list[dict]:
    """Per metric: cells[row][column] = summary of the values of the runs that trained (seeds pooled),
    with `diverged` and `at_chance`, the numbers of the cell's runs that failed to train so (their values are
    not in the summary; runs.outcome), and `undefined`, the number whose value is not a number (a Spearman
    over no confusions at all).
    `by_cell`: cell_runs(records, layout), when the caller has it already."""
    runs_by_cell = cell_runs(records, layout) if by_cell is None else by_cell
    failed: dict = {status: {} for status in FAILED_TO_TRAIN}
    for record in records:
        if record["status"] in failed:
            cell = (_label(record, layout["rows"]), _label(record, layout["columns"]))
            failed[record["status"]][cell] = failed[record["status"]].get(cell, 0) + 1
    failed_cells = {cell for by_cell in failed.values() for cell in by_cell}
    tables = []
    for metric in layout["metrics"]:
        cells: dict = {}
        seeded: dict = {}  # cell -> {seed: value}, to pair the runs of two columns by seed
        undefined: dict = {}
        for cell, runs in runs_by_cell.items():
            for record in runs:
                if not isinstance(record.get(metric), (int, float)):
                    continue
                if math.isfinite(record[metric]):
                    cells.setdefault(cell[0], {}).setdefault(cell[1], []).append(record[metric])
                    seeded.setdefault(cell, {})[record.get("seed")] = record[metric]
                else:
                    undefined[cell] = undefined.get(cell, 0) + 1
        if not cells and not failed_cells and not undefined:
            continue
        summary: dict = {}  # every cell with a run, also those where none trained or none has a value
        for row, col in {(r, c) for r, columns in cells.items() for c in columns} | failed_cells | set(undefined):
            values = cells.get(row, {}).get(col)
            summary.setdefault(row, {})[col] = {**(summarise(values) if values else {"n": 0}),
                                                **{status: failed[status].get((row, col), 0) for status in failed},
                                                "undefined": undefined.get((row, col), 0)}
        columns = sorted({c for row in summary.values() for c in row})
        chosen = metric == (layout.get("select") or {}).get("key")  # a choice, not an outcome: no difference
        diffs = {f"{pair[0]} - {pair[1]}": {row: _difference(cells[row], seeded, row, *pair) for row in cells
                                            if pair[0] in cells[row] and pair[1] in cells[row]}
                 for pair in ([] if chosen else layout.get("compare", []))}
        tables.append({"metric": metric, "rows": sorted(summary, key=_row_order), "columns": columns, "cells": summary,
                       "row_keys": list(layout["rows"]),
                       "diffs": diffs, "paper": (paper or {}).get(metric, {})})
    return tables


def _difference(row_cells: dict, seeded: dict, row: str, a: str, b: str, margin: float | None = None) -> dict:
    """Column a - column b in one row: paired by seed where both hold the same seeds, one run each (the
    protocol's design: fixed and learned runs share seeds), else Welch's interval; with a margin, the
    verdict its interval implies (statistics.margin_verdict)."""
    by_seed = seeded.get((row, a), {}), seeded.get((row, b), {})
    paired = (set(by_seed[0]) == set(by_seed[1]) and None not in by_seed[0]
              and len(by_seed[0]) == len(row_cells[a]) == len(row_cells[b]))
    d = (paired_difference_ci(*by_seed) if paired
         else {**difference_ci(row_cells[a], row_cells[b]), "paired": False, "n": (len(row_cells[a]), len(row_cells[b]))})
    return {**d, "margin": margin, "verdict": margin_verdict(d["low"], d["high"], margin)} if margin else d


def _fmt(metric: str, value: float) -> str:
    return f"{100 * value:.2f}" if _is_percent(metric) else f"{value:.3f}"


def _cell(metric: str, s: dict | None, paper_value=None) -> str:
    if s is None:
        return "-"
    paper = "" if paper_value is None else f" [paper {paper_value}]"
    uncounted = (*FAILED_TO_TRAIN, "undefined")
    runs = s["n"] + sum(s.get(k, 0) for k in uncounted)
    counted = "".join(f" [{s[k]}/{runs} {k.replace('_', ' ')}]" for k in uncounted if s.get(k))
    if s["n"] == 0:
        return f"-{counted}{paper}"
    std = "" if math.isnan(s["std"]) else f" ± {_fmt(metric, s['std'])}"
    return f"{_fmt(metric, s['mean'])}{std} (n={s['n']}){counted}{paper}"


def markdown(table: dict) -> str:
    metric = table["metric"]
    unit = " (%)" if _is_percent(metric) else ""
    rows = [[row, *(_cell(metric, table["cells"][row].get(c), table["paper"].get(f"{row} | {c}")) for c in table["columns"])]
            for row in table["rows"]]
    lines = [f"### {metric}{unit}", "", markdown_table(["", *table["columns"]], rows)]
    for name, per_row in table["diffs"].items():
        if not per_row:  # neither column of the pair has runs in this table
            continue
        lines += ["", f"{name}, mean difference with 95% CI (paired by seed where both columns hold the same "
                  "seeds: t on the paired differences; else Welch):", ""]
        for row, d in sorted(per_row.items(), key=lambda item: _row_order(item[0])):
            ci = "" if math.isnan(d["low"]) else f" [{_fmt(metric, d['low'])}, {_fmt(metric, d['high'])}]"
            how = (f"paired, n = {d['n']}" + ("" if math.isnan(d["p"]) else f", p = {d['p']:.3g}") if d.get("paired")
                   else f"Welch, n = {d['n'][0]} / {d['n'][1]}" if "n" in d else "Welch")
            verdict = f"; margin {_fmt(metric, d['margin'])}: **{d['verdict']}**" if d.get("margin") else ""
            lines.append(f"- {row}: {_fmt(metric, d['diff'])}{ci} ({how}{verdict})")
    return "\n".join(lines)


def latex(table: dict) -> str:
    metric = table["metric"]
    head = " & ".join(["", *table["columns"]]) + r" \\"
    body = []
    for row in table["rows"]:
        cells = []
        for c in table["columns"]:
            s = table["cells"][row].get(c)
            cells.append("-" if s is None or not s["n"] else f"${_fmt(metric, s['mean'])}" + (
                "" if math.isnan(s["std"]) else rf" \pm {_fmt(metric, s['std'])}") + "$")
        body.append(" & ".join([row.replace("_", r"\_"), *cells]) + r" \\")
    spec = "l" + "c" * len(table["columns"])
    caption = metric.replace("_", r"\_")
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{{spec}}}", r"\toprule", head,
                      r"\midrule", *body, r"\bottomrule", r"\end{tabular}",
                      rf"\caption{{{caption}: mean $\pm$ std over seeds.}}", r"\end{table}"])


def default_layouts(records: list[dict], experiment: dict) -> list[dict]:
    """The experiment's report layouts (one or a list), with rows, columns and metrics filled in."""
    varying = [k for k in (experiment.get("grid") or {})]
    layouts = []
    for given in report_layouts(experiment) or [{}]:
        layout = dict(given)
        across = experiment.get("variants") and "variant" not in layout.get("rows", [])  # not both ways: a diagonal
        layout.setdefault("columns", ["variant"] if across else [])
        layout.setdefault("rows", [k for k in varying if k not in layout["columns"]])
        layout.setdefault("metrics", ["test_acc"])
        layouts.append(layout)
    return layouts


def _experiment(sweep_dir: SweepDir) -> dict:
    """The experiment file the sweep copied into its folder, checked as the sweep checked it ({} when none)."""
    if not sweep_dir.experiment_path.exists():
        return {}
    return check_experiment(read_yaml(sweep_dir.experiment_path, "experiment record"), sweep_dir.experiment_path)


def write_report(root) -> dict:
    """Write report.md, results.csv, tables.tex and one figure per metric under `root`."""
    root, sweep_dir = Path(root), SweepDir(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give the --out folder of a sweep")
    records = collect(root)
    if not any(r["status"] == "finished" for r in records):
        raise UserError(f"{root} holds no finished runs ({len(records)} run folders); run fixedhead sweep first")
    experiment = _experiment(sweep_dir)
    layouts = default_layouts(records, experiment)
    sections = []
    for layout in layouts:
        by_cell = cell_runs(records, layout)
        sections.append((layout.get("title"), build_tables(records, layout, experiment.get("paper"), by_cell),
                         mixed_cells(by_cell, layout)))
    tables = [table for _, section, _ in sections for table in section]
    counts = {s: sum(r["status"] == s for r in records) for s in (*RESULTS, "failed", "unfinished")}
    rules = "; ".join(f"'k/m {k.replace('_', ' ')}': {rule}" for k, rule in OUTCOME_RULES.items())
    header = [f"# Report: {experiment.get('name', root.name)}", "",
              f"{len(records)} runs: " + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items())
              + ". Cells: mean ± sample std over the seeds that trained (n = runs), and beside it the cell's runs "
              f"that did not train ({rules}); their accuracies are in {sweep_dir.csv_path.name}; "
              "'k/m undefined' counts runs whose value is not a number "
              "(a Spearman correlation with no confusion to correlate), left out of the mean. "
              "Test-set numbers are from the final (or validation-selected) weights; nothing was selected on test.", ""]
    body = []
    for (title, section, mixed), layout in zip(sections, layouts):
        body += [f"## {title}\n"] if title else []
        body += [selection_note(layout["select"], sweep_dir.csv_path.name) + "\n"] if layout.get("select") else []
        body += ["Runs that differ in more than the seed share these cells (their means pool unlike runs):\n",
                 *(f"- {line}" for line in mixed), ""] if mixed else []
        body += [markdown(t) + "\n" for t in section]
    text = "\n".join(header + body)
    write_text(sweep_dir.report_path, text)
    write_text(sweep_dir.csv_path, _csv(records))
    write_text(sweep_dir.latex_path, "\n\n".join(latex(t) for t in tables) + "\n")
    figures = _figures(sections, layouts, sweep_dir)
    return {"tables": tables, "records": len(records), "counts": counts, "figures": figures, "markdown": text}


def _csv(records: list[dict]) -> str:
    """One row per run, every key any run has: run, status and variant first."""
    buffer = io.StringIO()
    first = ["run", "status", "variant"]
    writer = csv.DictWriter(buffer, fieldnames=first + [k for k in sorted({k for r in records for k in r})
                                                        if k not in first])
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def _figures(sections: list, layouts: list, sweep_dir: SweepDir) -> list:
    """One bar chart per table, or a layout's curves (curve: true)."""
    from .. import plots

    figures = []
    for k, ((_, section, _), layout) in enumerate(zip(sections, layouts)):
        for t in section:
            name = t["metric"] if len(sections) == 1 else f"{k + 1}_{t['metric']}"
            factor = 100 if _is_percent(t["metric"]) else 1
            if layout.get("curve"):
                figures += _curve_figures(t, lambda suffix, n=name: sweep_dir.figure(n + suffix), factor)
            else:
                figures.append(plots.bars(t, sweep_dir.figure(name), ylabel=_axis_label(t["metric"]),
                                          xlabel=", ".join(t["row_keys"]) or "all runs", factor=factor))
    return figures
