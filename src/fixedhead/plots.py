"""Figures only, no maths: every function takes computed arrays and writes PNG + PDF.

Figures are matplotlib `Figure` objects, never pyplot: no backend is chosen or switched (a notebook
that imports fixedhead keeps its own), no global figure list to leak into. Imported only when a
figure is drawn, so `import fixedhead` does not load matplotlib."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .files import save_figure

RASTER_POINTS = 20_000  # scatters with more points are pixels inside the PDF (1,000 classes: 8 MB of vectors)


def _figure(figsize, rows: int = 1, columns: int = 1, **subplots):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, columns, **subplots)


def _save(fig, stem: Path) -> list[str]:
    paths = []
    for suffix in (".png", ".pdf"):
        path = stem.with_suffix(suffix)
        save_figure(fig, path)
        paths.append(path.name)
    return paths


def _heatmap(ax, matrix: np.ndarray, classes: list[str], title: str, cmap: str = "RdBu_r", limits=(-1, 1)):
    image = ax.imshow(matrix, cmap=cmap, vmin=limits[0], vmax=limits[1])
    if len(classes) <= 30:
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{len(classes)} classes")
    ax.set_title(title, fontsize=9)
    return image


def class_vector_heatmap(matrix: np.ndarray, classes: list[str], stem: Path, title: str) -> list[str]:
    fig, ax = _figure((5, 4.5))
    fig.colorbar(_heatmap(ax, matrix, classes, title), ax=ax, fraction=0.046, label="cos(w_i, w_j)")
    return _save(fig, stem)


def confusion_heatmap(confusion: np.ndarray, classes: list[str], stem: Path) -> list[str]:
    """The confusion matrix with each row (true class) as fractions of its images."""
    totals = confusion.sum(1, keepdims=True)
    rows = np.divide(confusion, totals, out=np.zeros(confusion.shape, float), where=totals > 0)
    fig, ax = _figure((5, 4.5))
    image = _heatmap(ax, rows, classes, "confusions (row: true class, column: predicted)", "viridis", (0, 1))
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class's images")
    return _save(fig, stem)


def accuracy_vs_count(accuracies: list[float], counts: list[int], stem: Path) -> list[str]:
    """Each class's test accuracy against its training images (a long-tailed run), count axis logarithmic."""
    fig, ax = _figure((4.5, 3.5))
    ax.scatter(np.maximum(counts, 1), accuracies, s=14)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("test accuracy of the class")
    ax.set_ylim(-0.02, 1.02)
    return _save(fig, stem)


def heatmap_grid(panels: dict, stem: Path) -> list[str]:
    """panels: title -> (matrix, classes); one heatmap per run side by side."""
    fig, axes = _figure((4.2 * len(panels), 4.2), 1, len(panels), squeeze=False)
    for k, (ax, (title, (matrix, classes))) in enumerate(zip(axes[0], panels.items())):
        image = _heatmap(ax, matrix, classes, title)
        if k > 0:
            ax.set_yticklabels([])  # class names once, on the left: they would run into the panel before
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.02, label="cos(w_i, w_j)")
    return _save(fig, stem)


def similarity_confusion_scatter(cosines: np.ndarray, counts: np.ndarray, rho: float, stem: Path) -> list[str]:
    fig, ax = _figure((4.5, 3.5))
    ax.scatter(cosines, counts, s=8, alpha=0.6, rasterized=len(cosines) > RASTER_POINTS)
    ax.set_xlabel("cos(w_i, w_j)")
    ax.set_ylabel("images of class i predicted as j")
    ax.set_title(f"Spearman rho = {rho:.2f} over {len(cosines)} pairs", fontsize=9)
    return _save(fig, stem)


def feature_scatter(points: np.ndarray, labels: np.ndarray, classes: list[str], stem: Path, title: str,
                    rays: np.ndarray | None = None, axes: tuple[str, str] = ("feature 1", "feature 2")) -> list[str]:
    """2-D points coloured by class, equal aspect; `rays` (C, 2) are drawn as class vectors from the
    origin; `axes` names the two coordinates (e.g. the principal components and their variance)."""
    fig, ax = _figure((5, 5))
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for k in np.unique(labels):
        mask = labels == k
        ax.scatter(points[mask, 0], points[mask, 1], s=3, alpha=0.5, color=cmap(k % cmap.N),
                   label=classes[k] if len(classes) <= 20 else None, rasterized=len(points) > RASTER_POINTS)
    if rays is not None:
        reach = np.abs(points).max()
        for k, ray in enumerate(rays):
            end = ray / (np.linalg.norm(ray) + 1e-12) * reach
            ax.plot([0, end[0]], [0, end[1]], color=cmap(k % cmap.N), linewidth=1.5)
    if len(classes) <= 20:
        ax.legend(fontsize=6, markerscale=3, loc="best")
    ax.set_aspect("equal", adjustable="datalim")  # angles between features and class vectors read true
    ax.axhline(0, color="0.85", linewidth=0.5, zorder=0)
    ax.axvline(0, color="0.85", linewidth=0.5, zorder=0)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=9)
    return _save(fig, stem)


def accuracy_vs_severity(evaluations: dict, stem: Path) -> list[str]:
    """evaluations: run name -> evaluation.json dict; one panel per corruption, one line per run."""
    names = sorted({c for e in evaluations.values() for c in e["corruptions"]})
    fig, axes = _figure((3.6 * len(names), 3.2), 1, len(names), squeeze=False, sharey=True)
    for ax, corruption in zip(axes[0], names):
        for run, evaluation in evaluations.items():
            if corruption in evaluation["corruptions"]:
                acc = evaluation["corruptions"][corruption]["acc"]
                severities = sorted(acc, key=int)
                ax.plot([0] + [int(s) for s in severities], [evaluation["clean_acc"]] + [acc[s] for s in severities],
                        marker="o", label=run)
        ax.set_title(corruption.replace("_", " "), fontsize=9)
        ax.set_xlabel("severity (0 = clean)")
    axes[0][0].set_ylabel("test accuracy (fraction correct)")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, stem)


def bars(table: dict, stem: Path, ylabel: str, xlabel: str, factor: float = 1.0) -> list[str]:
    """A report table as grouped bars (rows as groups, columns as bars) with ±std error bars; values
    are multiplied by `factor` (100 for accuracies shown in %)."""
    rows, columns = table["rows"], table["columns"]
    width = 0.8 / max(len(columns), 1)
    fig, ax = _figure((max(4.0, 1.2 * len(rows) * max(len(columns), 1) * 0.6 + 2), 3.4))
    for k, column in enumerate(columns):
        cells = [table["cells"][row].get(column) for row in rows]
        cells = [c if c and c["n"] else None for c in cells]  # a cell where no run trained has no bar
        means = [factor * c["mean"] if c else np.nan for c in cells]
        stds = [0 if not c or np.isnan(c["std"]) else factor * c["std"] for c in cells]
        ax.bar(np.arange(len(rows)) + k * width, means, width, yerr=stds, capsize=4, label=column or "all",
               error_kw={"elinewidth": 1.2, "ecolor": "black"})
    ax.set_xticks(np.arange(len(rows)) + width * (len(columns) - 1) / 2, rows, rotation=20, ha="right", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("mean over seeds, error bars ± 1 sample std", fontsize=8)
    ax.legend(fontsize=7)
    return _save(fig, stem)


def curves(series: dict, stem: Path, xlabel: str, ylabel: str, log_x: bool = False, zero_line: bool = False,
           title: str = "") -> list[str]:
    """series: label -> (xs, means, lows, highs): one line per label with its confidence band as error bars."""
    fig, ax = _figure((5.2, 3.6))
    for label, (xs, means, lows, highs) in series.items():
        means, lows, highs = (np.asarray(v, dtype=float) for v in (means, lows, highs))
        below, above = np.nan_to_num(means - lows), np.nan_to_num(highs - means)
        ax.errorbar(xs, means, yerr=[below, above], marker="o", capsize=4, label=label)
    if log_x:
        ax.set_xscale("log")
    ticks = sorted({x for xs, *_ in series.values() for x in xs})
    if ticks:  # the measured values as plain numbers (10, 100, 1000), not powers
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    if zero_line:
        ax.axhline(0, color="0.5", linewidth=0.8, linestyle="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "mean over seeds, error bars: 95% confidence interval", fontsize=8)
    ax.legend(fontsize=7)
    return _save(fig, stem)
