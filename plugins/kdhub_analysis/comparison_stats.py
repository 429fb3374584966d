"""The statistics of a comparison: per-class ΔACC and ΔPA, the paper's undistillable classes, and the
seed statistics on top (tests per class, adjusted p-values, the overall accuracy); see
:mod:`kdhub_analysis.compare`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from kdhub.contract.errors import KdhubError
from kdhub_analysis.stats import DifferenceTest, adjust, pair_by_seed, paired_t, sign_counts, welch_t

__all__ = ["CORRECTION_NAMES", "CompareError", "ComparisonStats", "average_over_seeds", "pearson"]

CORRECTION_NAMES = ("bh", "holm", "none")


class CompareError(KdhubError):
    """A comparison cannot be made (unknown run, missing table, runs over different classes)."""


DEFAULT_POWER = 0.8
"""The power of the smallest detectable effect per class that reports give (kdhub_analysis.power)."""


@dataclass
class ComparisonStats:
    """Per-class values of a run (group) against a baseline (group), in percent, and their statistics;
    :class:`~kdhub_analysis.comparison_report.Comparison` adds the tables, the report and the figures."""

    classes: list[int]
    names: list[str]
    acc_baseline: list[float]
    acc_run: list[float]
    pa_baseline: list[float]
    pa_run: list[float]
    tol: float = 0.0
    split: str = "test"
    baseline_ids: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None  # the MLflow run the comparison was logged to
    # per seed (rows) and class (columns); empty = only the averages are known (one "seed" per side)
    acc_baseline_seeds: list[list[float]] = field(default_factory=list)
    acc_run_seeds: list[list[float]] = field(default_factory=list)
    seeds_baseline: list[int | None] = field(default_factory=list)
    seeds_run: list[int | None] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)  # samples per class in the split (overall accuracy)
    alpha: float = 0.05
    correction: str = "bh"
    confidence: float = 0.95
    power: float = DEFAULT_POWER  # of the detectable effects in the report (kdhub_analysis.power)

    @property
    def delta_acc(self) -> list[float]:
        return [r - b for r, b in zip(self.acc_run, self.acc_baseline, strict=True)]

    @property
    def delta_pa(self) -> list[float]:
        return [r - b for r, b in zip(self.pa_run, self.pa_baseline, strict=True)]

    @property
    def undistillable(self) -> list[int]:
        """Classes whose ΔACC is below −tol (NaN never is)."""
        return [c for c, d in zip(self.classes, self.delta_acc, strict=True) if d < -self.tol]

    @property
    def undistillable_count(self) -> int:
        return len(self.undistillable)

    @property
    def mean_delta_acc(self) -> float:
        """Mean ΔACC over the classes with a value (the dashed line of the paper's Figure 4)."""
        kept = [d for d in self.delta_acc if math.isfinite(d)]
        return sum(kept) / len(kept) if kept else math.nan

    @property
    def pearson(self) -> tuple[float, float, int]:
        """Pearson r between ΔPA and ΔACC across classes, its two-sided p-value, and the classes used."""
        return pearson(self.delta_pa, self.delta_acc)

    # seed statistics -----------------------------------------------------------------------------

    @property
    def baseline_by_seed(self) -> list[list[float]]:
        """Per-seed per-class accuracies of the baseline (the averages as one row if none were kept)."""
        return self.acc_baseline_seeds or [list(self.acc_baseline)]

    @property
    def run_by_seed(self) -> list[list[float]]:
        return self.acc_run_seeds or [list(self.acc_run)]

    @property
    def pairs(self) -> list[tuple[int, int]] | None:
        """(run row, baseline row) matched by seed number, or None when the sides are independent."""
        if not self.acc_baseline_seeds or not self.acc_run_seeds:
            return None
        return pair_by_seed(self.seeds_run, self.seeds_baseline)

    @property
    def test_name(self) -> str:
        if self.pairs is not None:
            return "paired t-test"
        if len(self.run_by_seed) >= 2 and len(self.baseline_by_seed) >= 2:
            return "Welch t-test"
        return "no test"

    def _column(self, rows: list[list[float]], m: int) -> list[float]:
        return [row[m] for row in rows]

    def _test(self, run: list[float], base: list[float]) -> DifferenceTest:
        pairs = self.pairs
        if pairs is not None:
            return paired_t([run[i] for i, _ in pairs], [base[j] for _, j in pairs], self.confidence)
        return welch_t(run, base, self.confidence)

    @property
    def class_tests(self) -> list[DifferenceTest]:
        """Per class: the test of ΔACC over seeds (paired when the seeds match, else Welch)."""
        run, base = self.run_by_seed, self.baseline_by_seed
        return [self._test(self._column(run, m), self._column(base, m)) for m in range(len(self.classes))]

    @property
    def p_adjusted(self) -> list[float]:
        """The classes' two-sided p-values adjusted by ``correction`` over the classes with a test."""
        return adjust([t.p for t in self.class_tests], self.correction)

    def _significant(self, sign: float) -> list[int]:
        out = []
        for c, test, p in zip(self.classes, self.class_tests, self.p_adjusted, strict=True):
            if math.isfinite(p) and p < self.alpha and math.isfinite(test.mean) and sign * test.mean > self.tol:
                out.append(c)
        return out

    @property
    def undistillable_significant(self) -> list[int]:
        """Classes whose mean ΔACC < −tol with an adjusted p-value below ``alpha`` (beyond seed noise)."""
        return self._significant(-1.0)

    @property
    def helped_significant(self) -> list[int]:
        """Classes whose mean ΔACC > tol with an adjusted p-value below ``alpha``."""
        return self._significant(1.0)

    @property
    def seed_deltas(self) -> list[list[float]]:
        """Per-class ΔACC of every seed pair (paired), or of every run seed against the baseline mean."""
        pairs = self.pairs
        if pairs is not None:
            run, base = self.run_by_seed, self.baseline_by_seed
            return [[r - b for r, b in zip(run[i], base[j], strict=True)] for i, j in pairs]
        return [[r - b for r, b in zip(row, self.acc_baseline, strict=True)] for row in self.run_by_seed]

    @property
    def sign_agreement(self) -> list[tuple[int, int]]:
        """Per class: (seeds whose ΔACC has the sign of the mean ΔACC, seeds with a ΔACC)."""
        out = []
        deltas = self.seed_deltas
        for m, test in enumerate(self.class_tests):
            pos, neg, zero = sign_counts(self._column(deltas, m))
            total = pos + neg + zero
            mean = test.mean
            agree = pos if mean > 0 else neg if mean < 0 else zero
            out.append((agree if math.isfinite(mean) else 0, total))
        return out

    @property
    def seed_undistillable_counts(self) -> list[int]:
        """The paper's rule applied to each seed's ΔACC on its own (see :attr:`seed_deltas`)."""
        return [sum(d < -self.tol for d in row if math.isfinite(d)) for row in self.seed_deltas]

    def overall(self, rows: list[list[float]]) -> list[float]:
        """Overall accuracy of each row: per-class accuracies weighted by the class counts (mean if none)."""
        out = []
        for row in rows:
            kept = [(a, self.counts[m] if self.counts else 1.0) for m, a in enumerate(row) if math.isfinite(a)]
            weight = math.fsum(w for _, w in kept)
            out.append(math.fsum(a * w for a, w in kept) / weight if weight > 0 else math.nan)
        return out

    @property
    def overall_test(self) -> DifferenceTest:
        """The test of the overall accuracy, run − baseline, over seeds."""
        return self._test(self.overall(self.run_by_seed), self.overall(self.baseline_by_seed))


def average_over_seeds(per_seed: Sequence[Sequence[float]]) -> list[float]:
    """Per-class mean over seeds, leaving NaN (an empty class) out; NaN where every seed is NaN."""
    if not per_seed:
        raise CompareError("no runs to average")
    out = []
    for values in zip(*per_seed, strict=True):
        kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        out.append(sum(kept) / len(kept) if kept else math.nan)
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """Pearson r of the pairs where both are finite, its two-sided p-value, and the pair count.

    NaN for r and p with fewer than 3 pairs or a constant side (r is undefined or meaningless).
    """
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    n = len(pairs)
    if n < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return math.nan, math.nan, n
    from scipy.stats import pearsonr

    result = pearsonr([a for a, _ in pairs], [b for _, b in pairs])
    return float(result[0]), float(result[1]), n


def _check_options(tol: float, alpha: float, correction: str, confidence: float) -> None:
    if tol < 0 or not math.isfinite(tol):
        raise CompareError(f"tol must be a finite number >= 0, got {tol}")
    if not 0 < alpha < 1:
        raise CompareError(f"alpha must be between 0 and 1, got {alpha}")
    if not 0 < confidence < 1:
        raise CompareError(f"confidence must be between 0 and 1, got {confidence}")
    if correction not in CORRECTION_NAMES:
        raise CompareError(f"correction must be one of {', '.join(CORRECTION_NAMES)}, got {correction!r}")
