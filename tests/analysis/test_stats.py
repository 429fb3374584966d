"""Seed statistics of comparisons: t-tests against scipy and hand values, corrections, degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from kdhub_analysis.stats import (
    adjust,
    benjamini_hochberg,
    difference_test,
    holm,
    pair_by_seed,
    paired_t,
    sign_counts,
    summary,
    welch_t,
)

NAN = math.nan


def test_summary_by_hand_and_nan_dropped():
    mean, sd, n = summary([1.0, 2.0, 4.0, NAN, None])
    assert (mean, n) == (7 / 3, 3)
    # deviations -4/3, -1/3, 5/3: squares 16/9 + 1/9 + 25/9 = 42/9, / (n - 1) = 7/3
    assert sd == pytest.approx(math.sqrt(7 / 3))
    assert sd == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert summary([5.0])[0] == 5.0
    assert math.isnan(summary([5.0])[1])
    assert summary([])[2] == 0


def test_paired_t_by_hand_and_against_scipy():
    run, base = [71.0, 73.5, 70.0, 72.0, 74.5], [70.0, 72.0, 70.5, 70.0, 72.5]
    # d = [1, 1.5, -0.5, 2, 2]: mean 1.2, sd sqrt(((-.2)^2 + .3^2 + 1.7^2 + .8^2 + .8^2) / 4) = sqrt(4.3 / 4)
    result = paired_t(run, base)
    assert result.test == "paired"
    assert result.mean == pytest.approx(1.2)
    assert result.sd == pytest.approx(math.sqrt(4.3 / 4))
    assert result.se == pytest.approx(math.sqrt(4.3 / 4) / math.sqrt(5))
    assert result.t == pytest.approx(1.2 / (math.sqrt(4.3 / 4) / math.sqrt(5)))
    assert result.df == 4
    reference = sp.ttest_rel(run, base)
    assert result.t == pytest.approx(reference.statistic)
    assert result.p == pytest.approx(reference.pvalue)
    ci = reference.confidence_interval(0.95)
    assert (result.ci_low, result.ci_high) == pytest.approx((ci.low, ci.high))
    assert result.n == 5


def test_paired_t_drops_pairs_with_nan():
    result = paired_t([1.0, NAN, 3.0, 4.0], [0.0, 1.0, 1.0, 1.0])
    reference = sp.ttest_rel([1.0, 3.0, 4.0], [0.0, 1.0, 1.0])
    assert result.n == 3
    assert result.p == pytest.approx(reference.pvalue)
    with pytest.raises(ValueError, match="paired_t"):
        paired_t([1.0], [1.0, 2.0])


def test_welch_against_scipy_and_by_hand():
    run, base = [1.0, 2.0, 3.0], [4.0, 5.0, 7.0]
    result = welch_t(run, base)
    reference = sp.ttest_ind(run, base, equal_var=False)
    assert result.test == "welch"
    assert result.mean == pytest.approx(-10 / 3)
    # variances 1 and 7/3 over n = 3: se^2 = 1/3 + 7/9 = 10/9; df = (10/9)^2 / ((1/9)/2 + (49/81)/2) = 3.448...
    assert result.se == pytest.approx(math.sqrt(10 / 9))
    assert result.df == pytest.approx((10 / 9) ** 2 / ((1 / 9) / 2 + (49 / 81) / 2))
    assert result.t == pytest.approx(reference.statistic)
    assert result.p == pytest.approx(reference.pvalue)  # 0.0419
    ci = reference.confidence_interval(0.95)
    assert (result.ci_low, result.ci_high) == pytest.approx((ci.low, ci.high))
    assert math.isnan(result.sd)
    unequal = welch_t([1.0, 2.0, 3.0, 2.5, 1.5], [2.0, 4.0])
    assert unequal.p == pytest.approx(sp.ttest_ind([1.0, 2.0, 3.0, 2.5, 1.5], [2.0, 4.0], equal_var=False).pvalue)


def test_degenerate_cases():
    # every seed moved by exactly +1: scipy gives NaN; the exact sign test gives 2 * 0.5^3 = 0.25
    same = paired_t([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    assert (same.t, same.p, same.ci_low, same.ci_high) == (math.inf, 0.25, 1.0, 1.0)
    assert paired_t([-2.2] * 6, [0.0] * 6).p == pytest.approx(2 / 64)
    # both sides constant: complete separation of 3 + 2 values, 2 / C(5, 3) = 0.2
    constant = welch_t([5.0, 5.0, 5.0], [4.0, 4.0])
    assert (constant.t, constant.p) == (math.inf, pytest.approx(0.2))
    none = paired_t([1.0, 2.0], [1.0, 2.0])  # no change at all: no evidence, p = 1 (scipy gives NaN)
    assert (none.t, none.p) == (0.0, 1.0)
    one = paired_t([1.0], [0.0])
    assert one.test == "none"
    assert one.mean == 1.0
    assert math.isnan(one.p)
    assert welch_t([1.0], [0.0, 1.0]).test == "none"
    assert math.isnan(welch_t([1.0], [0.0, 1.0]).p)


def test_pairing_by_seed_number():
    assert pair_by_seed([2, 0, 1], [0, 1, 2]) == [(1, 0), (2, 1), (0, 2)]  # in seed order
    assert pair_by_seed([0, 1], [0, 2]) is None  # different seeds
    assert pair_by_seed([0, 0], [0, 0]) is None  # a repeated seed
    assert pair_by_seed([0], [0]) is None  # one pair: no test
    assert pair_by_seed(None, [0, 1]) is None
    assert pair_by_seed([0, None], [0, 1]) is None
    run, base = [10.0, 11.0, 13.0], [9.0, 9.5, 12.5]
    # run seeds [2, 0, 1], baseline seeds [0, 1, 2]: pairs (run 11 - base 9), (13 - 9.5), (10 - 12.5)
    paired = difference_test(run, base, [2, 0, 1], [0, 1, 2])
    assert paired.test == "paired"
    assert paired.p == pytest.approx(sp.ttest_rel([11.0, 13.0, 10.0], [9.0, 9.5, 12.5]).pvalue)
    welch = difference_test(run, base, [0, 1, 2], [3, 4, 5])
    assert welch.test == "welch"
    assert welch.p == pytest.approx(sp.ttest_ind(run, base, equal_var=False).pvalue)


def test_holm_by_hand():
    # sorted p: .01 (x4 = .04), .02 (x3 = .06), .03 (x2 = .06), .04 (x1 = .04 -> monotone .06)
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.01, NAN, 0.02])  # NaN is no test: m = 2
    assert adjusted[0] == pytest.approx(0.02)
    assert math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.02)


def test_benjamini_hochberg_by_hand_and_against_scipy():
    # sorted p: .01 * 4/1 = .04, .02 * 4/2 = .04, .03 * 4/3 = .04, .04 * 4/4 = .04
    assert benjamini_hochberg([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.04] * 4)
    # .001*5 = .005, .008*5/2 = .02, .039*5/3 = .065, .041*5/4 = .05125 (min from the right: .05125), .6
    ps = [0.041, 0.001, 0.6, 0.008, 0.039]
    assert benjamini_hochberg(ps) == pytest.approx([0.05125, 0.005, 0.6, 0.02, 0.05125])
    rng = np.random.default_rng(0)
    ps = list(rng.uniform(0, 0.2, size=30))
    assert benjamini_hochberg(ps) == pytest.approx(list(sp.false_discovery_control(ps, method="bh")))
    with_nan = benjamini_hochberg([0.01, NAN, 0.04])
    assert with_nan[0] == pytest.approx(0.02)
    assert math.isnan(with_nan[1])
    assert with_nan[2] == pytest.approx(0.04)


def test_adjust_and_sign_counts():
    assert adjust([0.01, 0.02], "none") == [0.01, 0.02]
    assert adjust([0.01, 0.02], "holm") == pytest.approx([0.02, 0.02])
    with pytest.raises(ValueError, match="unknown correction"):
        adjust([0.1], "bonferoni")
    assert sign_counts([1.0, -2.0, 0.0, 3.0, NAN]) == (2, 1, 1)
