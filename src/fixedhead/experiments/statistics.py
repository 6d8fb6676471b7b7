"""Numbers over seeds: mean, sample std and n, and 95% t-intervals for a mean and for a difference of two
means (Welch). Pure functions, lists in, dicts or tuples out; the report and the benchmarks both use them."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def summarise(values: list[float]) -> dict:
    """mean, sample std (ddof=1) and n."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else float("nan"),
            "n": len(array), "values": [float(v) for v in array]}


def difference_ci(a: list[float], b: list[float], level: float = 0.95) -> dict:
    """mean(a) - mean(b) with a Welch t confidence interval (unequal variances)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = a.mean() - b.mean()
    if len(a) < 2 or len(b) < 2:
        return {"diff": float(diff), "low": float("nan"), "high": float("nan"), "df": float("nan")}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": float(diff), "low": float(diff), "high": float(diff), "df": float("inf")}
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return {"diff": float(diff), "low": float(diff - half), "high": float(diff + half), "df": float(df)}


def mean_ci(cell: dict, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a t confidence interval of the mean over the cell's runs (nan bounds for n < 2)."""
    if not cell or not cell.get("n"):
        return math.nan, math.nan, math.nan
    if cell["n"] < 2:
        return cell["mean"], math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, cell["n"] - 1) * cell["std"] / math.sqrt(cell["n"])
    return cell["mean"], cell["mean"] - half, cell["mean"] + half
