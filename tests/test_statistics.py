"""Paired differences, margin verdicts and McNemar's exact test against scipy and the binomial sum by hand."""

import math

import numpy as np
import pytest
from scipy import stats

from fixedhead.experiments.statistics import mcnemar_exact, margin_verdict, paired_difference_ci


def test_the_paired_interval_and_p_are_scipys_paired_t_test():
    a = {0: 0.81, 1: 0.79, 2: 0.84, 3: 0.80, 4: 0.83}
    b = {3: 0.78, 0: 0.80, 1: 0.775, 2: 0.83, 4: 0.815}  # pairs by seed, not by order
    got = paired_difference_ci(a, b)
    ref = stats.ttest_rel([a[s] for s in range(5)], [b[s] for s in range(5)])
    low, high = ref.confidence_interval(0.95)
    assert got["p"] == pytest.approx(ref.pvalue) and (got["low"], got["high"]) == pytest.approx((low, high))
    assert got["n"] == 5 and got["diff"] == pytest.approx(np.mean([a[s] - b[s] for s in range(5)]))
    with pytest.raises(ValueError):
        paired_difference_ci({0: 1.0, 1: 2.0}, {0: 1.0, 2: 2.0})
    assert math.isnan(paired_difference_ci({0: 1.0}, {0: 0.5})["low"])


@pytest.mark.parametrize("low, high, verdict", [
    (0.1, 2.0, "superior"), (-0.5, 1.5, "non-inferior"), (-0.9, -0.1, "non-inferior"),
    (-3.0, -1.2, "inferior"), (-2.0, 0.5, "inconclusive"), (math.nan, math.nan, "inconclusive"),
])
def test_margin_verdicts(low, high, verdict):
    assert margin_verdict(low, high, margin=1.0) == verdict


def test_mcnemar_exact_is_the_two_sided_binomial_sum():
    rng = np.random.default_rng(0)
    a, b = rng.random(400) < 0.8, rng.random(400) < 0.75
    got = mcnemar_exact(a, b)
    k, n = got["a_only"], got["a_only"] + got["b_only"]
    assert k == int((a & ~b).sum()) and n - k == int((~a & b).sum())
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    assert got["p"] == pytest.approx(min(1.0, 2 * tail))
    assert mcnemar_exact([True, False], [True, False])["p"] == 1.0
