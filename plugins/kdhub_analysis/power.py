"""Statistical power of ``kdhub compare``: is "not significant" no effect, or too few seeds?

For a t-test of ΔACC over seeds with standard error ``se`` on ``df`` degrees of freedom, the test at
level ``alpha`` (two-sided) rejects with probability (its *power*)::

    power(δ) = P(|T'| > t_{1−α/2, df}),   T' ~ noncentral t(df, ncp = δ / se)

- :func:`t_power`: that probability for a true difference ``δ``.
- :func:`detectable_effect`: the smallest ``|δ|`` the test detects with the wanted power (0.8 by
  default) at this number of seeds — the *minimal detectable effect*, in the unit of ``se``
  (percentage points for ``kdhub compare``). A class whose mean ΔACC is far below it can be "not
  significant" for want of seeds, not for want of an effect.
- :func:`seeds_needed`: the seeds a paired t-test needs to detect an effect ``δ`` given the standard
  deviation ``sd`` of the per-seed differences (``se = sd / √n``, ``df = n − 1``).

For the paired test (seeds matched by seed number) ``se = sd(ΔACC over seeds) / √n``; for Welch's
test it is the test's own standard error and Welch–Satterthwaite degrees of freedom. The standard
deviation is the one measured over the seeds at hand, so the answers are estimates, as uncertain as
that standard deviation (with 5 seeds, easily a factor of 1.5 either way). The level is per test,
before any correction over classes: Benjamini–Hochberg over ``m`` classes asks a lone differing class
for ``p < alpha / m``, so :func:`class_power` also gives the detectable effect at ``alpha / m``.

Reference values (Cohen's tables, G*Power): a paired/one-sample t-test of an effect of one standard
deviation with 10 pairs at α = 0.05 has power 0.8031; an effect of half a standard deviation needs 34
pairs for power 0.8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kdhub.contract.runlog import Table
from kdhub_analysis.comparison_stats import DEFAULT_POWER, ComparisonStats

__all__ = ["ClassPower", "class_power", "detectable_effect", "power_lines", "power_table", "seeds_needed", "t_power"]

MAX_SEEDS = 10_000  # seeds_needed gives up (None) beyond this


def t_power(effect: float, se: float, df: float, alpha: float = 0.05) -> float:
    """Power of the two-sided t-test at level ``alpha`` for a true difference ``effect`` (same unit as ``se``)."""
    if not (se > 0 and df > 0 and math.isfinite(se) and math.isfinite(df)) or not 0 < alpha < 1:
        return math.nan
    from scipy.stats import nct
    from scipy.stats import t as student_t

    critical = float(student_t.ppf(1 - alpha / 2, df))
    ncp = abs(effect) / se
    if ncp == 0:
        return alpha
    power = float(nct.sf(critical, df, ncp) + nct.cdf(-critical, df, ncp))
    if not math.isfinite(power):  # scipy's nct gives NaN far in the tail, where the power is 1
        return 1.0
    return min(1.0, power)


def detectable_effect(se: float, df: float, alpha: float = 0.05, power: float = DEFAULT_POWER) -> float:
    """The smallest ``|δ|`` (unit of ``se``) whose test at level ``alpha`` rejects with probability ``power``.

    NaN without a spread or degrees of freedom (fewer than 2 seeds, or every seed moved the same amount).
    """
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if not (se > 0 and df > 0 and math.isfinite(se) and math.isfinite(df)):
        return math.nan
    if power <= alpha:
        return 0.0
    low, high = 0.0, se
    while t_power(high, se, df, alpha) < power:  # the power grows with the effect: bracket, then bisect
        low, high = high, 2 * high
    for _ in range(100):
        mid = (low + high) / 2
        if t_power(mid, se, df, alpha) < power:
            low = mid
        else:
            high = mid
        if high - low <= 1e-9 * high:
            break
    return high


def seeds_needed(effect: float, sd: float, alpha: float = 0.05, power: float = DEFAULT_POWER) -> int | None:
    """The fewest seed pairs (≥ 2) with which a paired t-test detects ``effect`` with ``power``.

    ``sd`` is the standard deviation of the per-seed differences. None when the effect is 0, the
    spread unknown, or more than 10,000 seeds would be needed.
    """
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if not (math.isfinite(effect) and effect != 0 and sd > 0 and math.isfinite(sd)):
        return None

    def enough(n: int) -> bool:
        return t_power(effect, sd / math.sqrt(n), n - 1, alpha) >= power

    if not enough(MAX_SEEDS):
        return None
    low, high = 1, 2  # not enough(low) by convention (one seed has no test), find the first enough(high)
    while not enough(high):
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        mid = (low + high) // 2
        if enough(mid):
            high = mid
        else:
            low = mid
    return high


@dataclass(frozen=True)
class ClassPower:
    """One class: the spread of its ΔACC, the smallest effect detectable now, and the seeds its own ΔACC needs."""

    cls: int
    name: str
    delta: float  # the mean ΔACC (points)
    sd: float  # standard deviation of the per-seed differences (paired) or NaN (Welch)
    se: float
    df: float
    n: int  # pairs (paired) or the values of both sides (Welch)
    detectable: float  # at alpha
    detectable_corrected: float  # at alpha / classes: what BH asks of a single differing class
    seeds_for_delta: int | None  # paired: seeds to detect this class's own mean ΔACC at its sd


def class_power(comparison: ComparisonStats, power: float = DEFAULT_POWER) -> list[ClassPower]:
    """Per class of a comparison: the minimal detectable |ΔACC| at its seeds and spread (NaN without a test)."""
    tests = comparison.class_tests
    alpha, m = comparison.alpha, max(1, len(comparison.classes))
    rows = []
    for i, (cls, test) in enumerate(zip(comparison.classes, tests, strict=True)):
        delta = comparison.delta_acc[i]
        paired = test.test == "paired"
        rows.append(
            ClassPower(
                cls=cls,
                name=str(comparison.names[i]),
                delta=delta,
                sd=test.sd,
                se=test.se,
                df=test.df,
                n=test.n,
                detectable=detectable_effect(test.se, test.df, alpha, power),
                detectable_corrected=detectable_effect(test.se, test.df, alpha / m, power),
                seeds_for_delta=seeds_needed(delta, test.sd, alpha, power) if paired else None,
            )
        )
    return rows


def power_table(comparison: ComparisonStats, power: float = DEFAULT_POWER) -> Table:
    """The per-class power as a table (``compare/power``): NaN and -1 where undefined."""
    rows = class_power(comparison, power)
    return {
        "class": [r.cls for r in rows],
        "name": [r.name for r in rows],
        "delta_acc": [r.delta for r in rows],
        "delta_acc_std": [r.sd for r in rows],
        "se": [r.se for r in rows],
        "df": [r.df for r in rows],
        "alpha": [comparison.alpha] * len(rows),
        "power": [power] * len(rows),
        "detectable": [r.detectable for r in rows],
        "detectable_corrected": [r.detectable_corrected for r in rows],
        "seeds_for_delta": [-1 if r.seeds_for_delta is None else r.seeds_for_delta for r in rows],
    }


def _points(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "n/a"


def power_lines(comparison: ComparisonStats, power: float = DEFAULT_POWER) -> list[str]:
    """The report's power section: per class, the smallest |ΔACC| detectable with these seeds (none without a test)."""
    if comparison.test_name == "no test":
        return []
    rows = class_power(comparison, power)
    m = len(rows)
    width = max([4, *(len(r.name) for r in rows)])
    seeds = f"{rows[0].n} seed pairs" if comparison.pairs is not None else f"{rows[0].n} runs"
    lines = [
        f"power ({comparison.test_name}, {seeds}, α = {comparison.alpha:g}, power {power:g}): the smallest |ΔACC|"
        f" each class would show beyond noise with these seeds, at α and at α/{m} (what the correction asks of a"
        " lone class), and the seeds its own ΔACC would need",
        f"{'class':>5}  {'name':<{width}} {'ΔACC':>7} {'sd':>5} {'detect.':>8} {f'at α/{m}':>8} {'seeds':>6}",
    ]
    below = []
    for r in rows:
        need = "-" if r.seeds_for_delta is None else str(r.seeds_for_delta)
        lines.append(
            f"{r.cls:>5}  {r.name:<{width}} {r.delta:>+7.2f} {_points(r.sd):>5} {_points(r.detectable):>8}"
            f" {_points(r.detectable_corrected):>8} {need:>6}"
        )
        if math.isfinite(r.detectable) and abs(r.delta) < r.detectable:
            below.append(r.name)
    finite = [r.detectable for r in rows if math.isfinite(r.detectable)]
    if finite:
        lines.append(
            f"detectable |ΔACC| with these seeds: {min(finite):.2f} to {max(finite):.2f} points;"
            f" {len(below)} of {m} classes changed by less (a non-significant result there says little)"
        )
    return lines
