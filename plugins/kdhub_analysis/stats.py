"""Statistics of comparisons over seeds: mean ± std, paired and Welch t-tests, multiple-testing corrections.

Pure functions on plain Python sequences (NaN = missing value, dropped), used by ``kdhub compare``
to tell a per-class accuracy change from seed noise:

- :func:`summary`: mean, sample standard deviation (``ddof = 1``) and count of the finite values.
- :func:`paired_t`: Student's paired t-test of ``run − baseline`` over seeds paired by seed number
  (``t = mean(d) / (sd(d) / √n)``, ``n − 1`` degrees of freedom, two-sided p, t confidence interval).
- :func:`welch_t`: Welch's unequal-variance t-test when the two sides do not share their seeds
  (Welch–Satterthwaite degrees of freedom).
- :func:`holm` (family-wise error rate, any dependence) and :func:`benjamini_hochberg` (false
  discovery rate, independent or positively dependent tests): adjusted p-values.

Degenerate cases, where scipy returns NaN (the spread is 0: on small test sets a class accuracy
moves in steps, and every seed can move it by the same step): a zero difference gives ``t = 0,
p = 1`` (no evidence of any change); a non-zero one gives ``t = ±inf`` and falls back to an exact,
distribution-free p-value instead of calling it certain — the two-sided sign test
``p = 2 · 0.5^n`` for n identical paired differences, and for Welch (both sides constant) the
probability of a complete separation of the sides under random relabelling,
``p = 2 / C(n_run + n_baseline, n_run)``. Fewer than 2 values on a side (paired: fewer than 2
pairs) give NaN for t and p: no test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CORRECTIONS",
    "DifferenceTest",
    "adjust",
    "benjamini_hochberg",
    "difference_test",
    "holm",
    "pair_by_seed",
    "paired_t",
    "sign_counts",
    "summary",
    "welch_t",
]

NAN = math.nan


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def summary(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, sample standard deviation with ddof = 1, n) of the finite values; NaN where undefined."""
    kept = _finite(values)
    n = len(kept)
    if n == 0:
        return NAN, NAN, 0
    mean = math.fsum(kept) / n
    if n < 2:
        return mean, NAN, n
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in kept) / (n - 1)), n


@dataclass(frozen=True)
class DifferenceTest:
    """A test of ``run − baseline``: the mean difference, its spread, t, df, two-sided p and a CI.

    ``test`` is ``"paired"`` (seeds paired by seed number), ``"welch"`` (independent sides) or
    ``"none"`` (too few values to test). ``sd`` is the standard deviation of the per-seed differences
    (paired) or NaN (Welch: see each side's own spread). ``n`` counts the pairs (paired) or the
    values of both sides (Welch).
    """

    test: str
    mean: float
    sd: float
    se: float
    t: float
    df: float
    p: float
    ci_low: float
    ci_high: float
    n: int


def _t_result(
    test: str, mean: float, sd: float, se: float, df: float, n: int, confidence: float, exact_p: float
) -> DifferenceTest:
    from scipy.stats import t as student_t

    if se == 0:
        if mean == 0:
            return DifferenceTest(test, mean, sd, se, 0.0, df, 1.0, mean, mean, n)
        return DifferenceTest(test, mean, sd, se, math.copysign(math.inf, mean), df, exact_p, mean, mean, n)
    t = mean / se
    p = float(2 * student_t.sf(abs(t), df))
    half = float(student_t.ppf(0.5 + confidence / 2, df)) * se
    return DifferenceTest(test, mean, sd, se, t, df, min(1.0, p), mean - half, mean + half, n)


def paired_t(run: Sequence[float | None], baseline: Sequence[float | None], confidence: float = 0.95) -> DifferenceTest:
    """Paired t-test of ``run[i] − baseline[i]``; pairs with a NaN on either side are dropped."""
    if len(run) != len(baseline):
        raise ValueError(f"paired_t: {len(run)} run values and {len(baseline)} baseline values")
    diffs = _finite([r - b for r, b in zip(_nan(run), _nan(baseline), strict=True)])
    mean, sd, n = summary(diffs)
    if n < 2:
        return DifferenceTest("none", mean, NAN, NAN, NAN, NAN, NAN, NAN, NAN, n)
    return _t_result("paired", mean, sd, sd / math.sqrt(n), n - 1, n, confidence, min(1.0, 2 * 0.5**n))


def welch_t(run: Sequence[float | None], baseline: Sequence[float | None], confidence: float = 0.95) -> DifferenceTest:
    """Welch's t-test of ``mean(run) − mean(baseline)`` for independent sides (NaN values dropped)."""
    m_r, s_r, n_r = summary(run)
    m_b, s_b, n_b = summary(baseline)
    mean = m_r - m_b
    if n_r < 2 or n_b < 2:
        return DifferenceTest("none", mean, NAN, NAN, NAN, NAN, NAN, NAN, NAN, n_r + n_b)
    v_r, v_b = s_r * s_r / n_r, s_b * s_b / n_b
    se = math.sqrt(v_r + v_b)
    df = (v_r + v_b) ** 2 / (v_r * v_r / (n_r - 1) + v_b * v_b / (n_b - 1)) if se > 0 else float(n_r + n_b - 2)
    separation = min(1.0, 2 / math.comb(n_r + n_b, n_r))
    return _t_result("welch", mean, NAN, se, df, n_r + n_b, confidence, separation)


def difference_test(
    run: Sequence[float | None],
    baseline: Sequence[float | None],
    run_seeds: Sequence[int | None] | None = None,
    baseline_seeds: Sequence[int | None] | None = None,
    confidence: float = 0.95,
) -> DifferenceTest:
    """Paired t-test when both sides have the same distinct seeds (matched by seed number), else Welch."""
    pairs = pair_by_seed(run_seeds, baseline_seeds)
    if pairs is not None:
        return paired_t([run[i] for i, _ in pairs], [baseline[j] for _, j in pairs], confidence)
    return welch_t(run, baseline, confidence)


def pair_by_seed(
    run_seeds: Sequence[int | None] | None, baseline_seeds: Sequence[int | None] | None
) -> list[tuple[int, int]] | None:
    """(run index, baseline index) pairs in increasing seed order when both sides hold the same distinct
    seeds (at least 2 of them), else None (the sides are then treated as independent)."""
    if run_seeds is None or baseline_seeds is None:
        return None
    if any(s is None for s in run_seeds) or any(s is None for s in baseline_seeds):
        return None
    if len(set(run_seeds)) != len(run_seeds) or len(set(baseline_seeds)) != len(baseline_seeds):
        return None
    if set(run_seeds) != set(baseline_seeds) or len(run_seeds) < 2:
        return None
    where = {s: j for j, s in enumerate(baseline_seeds)}
    return [(i, where[s]) for i, s in sorted(enumerate(run_seeds), key=lambda item: -1 if item[1] is None else item[1])]


def sign_counts(diffs: Sequence[float | None]) -> tuple[int, int, int]:
    """(positive, negative, zero) counts of the finite differences."""
    kept = _finite(diffs)
    return sum(d > 0 for d in kept), sum(d < 0 for d in kept), sum(d == 0 for d in kept)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (controls the family-wise error rate under any dependence).

    Sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m − j + 1) p_(j))`` with ``m`` the
    number of finite p-values; NaN stays NaN and is not counted in ``m``.
    """
    order = sorted((i for i, p in enumerate(pvalues) if math.isfinite(p)), key=lambda i: pvalues[i])
    m = len(order)
    out = [NAN] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (q-values; false discovery rate, independent or PRDS tests).

    Sorted ascending, ``p_(i)`` becomes ``min_{j >= i} min(1, m p_(j) / j)``; NaN stays NaN and is not
    counted in ``m``.
    """
    order = sorted((i for i, p in enumerate(pvalues) if math.isfinite(p)), key=lambda i: pvalues[i])
    m = len(order)
    out = [NAN] * len(pvalues)
    running = 1.0
    for rank in range(m - 1, -1, -1):
        i = order[rank]
        running = min(running, m * pvalues[i] / (rank + 1))
        out[i] = min(1.0, running)
    return out


CORRECTIONS = {"bh": benjamini_hochberg, "holm": holm}


def adjust(pvalues: Sequence[float], method: str) -> list[float]:
    """Adjusted p-values by ``method`` (``bh``, ``holm`` or ``none``)."""
    if method == "none":
        return [float(p) for p in pvalues]
    try:
        return CORRECTIONS[method](pvalues)
    except KeyError:
        raise ValueError(f"unknown correction {method!r}; expected one of bh, holm, none") from None


def _nan(values: Sequence[float | None]) -> list[float]:
    return [NAN if v is None else float(v) for v in values]
