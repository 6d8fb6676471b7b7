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
    x, y = np.asarray(a, float), np.asarray(b, float)
    diff = x.mean() - y.mean()
    if len(x) < 2 or len(y) < 2:
        return {"diff": float(diff), "low": float("nan"), "high": float("nan"), "df": float("nan")}
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
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


def paired_difference_ci(a: dict, b: dict, level: float = 0.95) -> dict:
    """mean over seeds of a[seed] - b[seed] (runs paired by seed: same data order, same initialisation where
    the models share it), with a t interval on the n paired differences (df = n - 1) and the paired t-test's
    two-sided p; `a` and `b` map seed -> value and must hold the same seeds."""
    if set(a) != set(b):
        raise ValueError("paired values need the same seeds on both sides")
    d = np.asarray([a[s] - b[s] for s in sorted(a)], float)
    n, diff = len(d), float(d.mean())
    if n < 2:
        return {"diff": diff, "low": math.nan, "high": math.nan, "df": math.nan, "p": math.nan, "n": n, "paired": True}
    se = d.std(ddof=1) / math.sqrt(n)
    if se == 0:
        return {"diff": diff, "low": diff, "high": diff, "df": n - 1, "p": 0.0 if diff else 1.0, "n": n, "paired": True}
    half = stats.t.ppf(0.5 + level / 2, n - 1) * se
    p = 2 * stats.t.sf(abs(diff) / se, n - 1)
    return {"diff": diff, "low": diff - half, "high": diff + half, "df": n - 1, "p": float(p), "n": n, "paired": True}


def margin_verdict(low: float, high: float, margin: float) -> str:
    """What an interval of a difference (a - b, larger is better) says against a margin m > 0:
    superior (low > 0), non-inferior (low > -m: a is worse by less than the margin, if at all), inferior
    (high < -m: worse by more than the margin), else inconclusive (the interval is too wide for either)."""
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if low > 0:
        return "superior"
    if low > -margin:
        return "non-inferior"
    if high < -margin:
        return "inferior"
    return "inconclusive"


def mcnemar_exact(a_correct, b_correct) -> dict:
    """McNemar's exact test of two classifiers on the same images: of the images exactly one of them gets
    right (a_only + b_only), is a_only's share different from one half? Two-sided binomial p. It speaks of
    these two trained models on these images; seed-to-seed variation of training is not in it."""
    a_correct, b_correct = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    a_only, b_only = int((a_correct & ~b_correct).sum()), int((~a_correct & b_correct).sum())
    p = 1.0 if a_only + b_only == 0 else float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p": p}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given: the k-th smallest p is
    multiplied by (m - k + 1), made non-decreasing along that order, and capped at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def non_inferiority_p(diff: float, low: float, high: float, n: int, margin: float) -> float:
    """One-sided p of a paired t test of H0: true difference <= -margin, from a paired_difference_ci result
    (its 95% interval gives the standard error)."""
    if n < 2 or math.isnan(low):
        return math.nan
    se = (high - low) / (2 * stats.t.ppf(0.975, n - 1))
    return float(stats.t.sf((diff + margin) / se, n - 1)) if se > 0 else (0.0 if diff > -margin else 1.0)
