"""Paired differences, margin verdicts and McNemar's exact test against scipy and the binomial sum by hand."""

import math

import numpy as np
import pytest
from scipy import stats

from fixedhead.experiments.statistics import margin_verdict, mcnemar_exact, paired_difference_ci


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


def test_holm_adjusts_as_the_step_down_rule_says():
    from fixedhead.experiments.statistics import holm

    # m = 3: sorted 0.01, 0.02, 0.04 -> 0.03, 0.04, 0.04 (the last made non-decreasing), back in given order.
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_the_non_inferiority_p_is_the_one_sided_paired_t_test_against_the_margin():
    from fixedhead.experiments.statistics import non_inferiority_p

    a, b = [0.81, 0.79, 0.84, 0.80, 0.83], [0.815, 0.80, 0.835, 0.81, 0.83]
    d = paired_difference_ci(dict(enumerate(a)), dict(enumerate(b)))
    shifted = [x + 0.02 for x in a]  # H0: a - b <= -0.02  <=>  (a + 0.02) - b <= 0
    ref = stats.ttest_rel(shifted, b, alternative="greater").pvalue
    assert non_inferiority_p(d["diff"], d["low"], d["high"], d["n"], 0.02) == pytest.approx(ref)
