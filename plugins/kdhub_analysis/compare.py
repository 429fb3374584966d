"""``kdhub compare``: per-class comparison of runs against a baseline — ΔACC, undistillable classes, ΔPA.

Zhu et al., "Teach Less, Learn More: On the Undistillable Classes in Knowledge Distillation",
NeurIPS 2022, Eq. 1-3 and Figures 2 and 4. kdhub differences everything as *run − baseline*, so a
positive ΔACC means distillation helped the class (the paper's Eq. 1 writes the opposite order but
reads it the same way)::

    ΔACC_m = acc_m(run) − acc_m(baseline)         class m is undistillable iff ΔACC_m < −tol
    ΔPA_m  = PA_m(run) − PA_m(baseline)            PA_m: top-1 agreement with the teacher on class m

With several runs per side (seeds), per-class values are averaged over the seeds first (NaN, an
empty class, left out), then differenced: that is the paper's rule. On top of it, every class gets
seed statistics (:mod:`kdhub_analysis.stats`): the standard deviation of ΔACC over seeds, how many
seeds agree in sign, a paired t-test (seeds matched by seed number when both sides ran the same
seeds, else Welch's test), its confidence interval, and p-values adjusted for testing every class
(Benjamini–Hochberg by default, Holm on request). A class is *undistillable beyond seed noise* iff
its mean ΔACC < −tol and its adjusted p < alpha. The overall accuracy gets mean ± std per side and
the same test. Accuracies come from the table
:data:`kdhub.tables.PER_CLASS_ACCURACY` (``<split>/per_class_accuracy``, column ``student``, logged by
the ``per_class_accuracy`` metric); agreements from :data:`kdhub.tables.AGREEMENT`
(``<split>/agreement``, column ``pa_by_label``, a fraction, shown here in percent).
A vanilla baseline has an agreement only if it was trained with the teacher attached for
evaluation (``teacher:`` set, ``methods: []``: the engine never runs the teacher in training then).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kdhub
from kdhub.errors import KdhubError
from kdhub.figures import new_figure
from kdhub.runlog import Table
from kdhub.tables import AGREEMENT, PER_CLASS_ACCURACY
from kdhub_analysis.power import DEFAULT_POWER, power_lines, power_table
from kdhub_analysis.stats import DifferenceTest, adjust, pair_by_seed, paired_t, sign_counts, summary, welch_t

__all__ = [
    "CompareCommand",
    "CompareError",
    "Comparison",
    "average_over_seeds",
    "compare_runs",
    "compare_tables",
    "pearson",
    "save_figures",
]

ACCURACY_COLUMN = "student"  # per-class accuracy in %
AGREEMENT_COLUMN = "pa_by_label"  # per-class prediction agreement with the teacher, a fraction
AGREEMENT_SCALE = 100.0  # fractions -> percent, the unit of the accuracies
CORRECTION_NAMES = ("bh", "holm", "none")


class CompareError(KdhubError):
    """A comparison cannot be made (unknown run, missing table, runs over different classes)."""


@dataclass
class Comparison:
    """Per-class values of a run (group) against a baseline (group), in percent; see the module docstring."""

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

    def table(self) -> Table:
        undistillable = set(self.undistillable)
        significant = set(self.undistillable_significant)
        tests, agreement = self.class_tests, self.sign_agreement
        base_spread = [summary(self._column(self.baseline_by_seed, m))[1] for m in range(len(self.classes))]
        run_spread = [summary(self._column(self.run_by_seed, m))[1] for m in range(len(self.classes))]
        return {
            "class": list(self.classes),
            "name": list(self.names),
            "acc_baseline": list(self.acc_baseline),
            "acc_run": list(self.acc_run),
            "delta_acc": self.delta_acc,
            "pa_baseline": list(self.pa_baseline),
            "pa_run": list(self.pa_run),
            "delta_pa": self.delta_pa,
            "undistillable": [c in undistillable for c in self.classes],
            "std_baseline": base_spread,
            "std_run": run_spread,
            "delta_acc_std": [t.sd for t in tests],
            "seeds_agree": [a for a, _ in agreement],
            "seeds": [n for _, n in agreement],
            "test": [t.test for t in tests],
            "t": [t.t for t in tests],
            "df": [t.df for t in tests],
            "p": [t.p for t in tests],
            "p_adjusted": self.p_adjusted,
            "ci_low": [t.ci_low for t in tests],
            "ci_high": [t.ci_high for t in tests],
            "undistillable_significant": [c in significant for c in self.classes],
        }

    def seed_table(self) -> Table:
        """Every input value, one row per (side, seed, class): what a reviewer recomputes the statistics from."""
        table: Table = {"side": [], "run_id": [], "seed": [], "class": [], "name": [], "count": [], "acc": []}
        for side, rows, ids, seeds in (
            ("baseline", self.baseline_by_seed, self.baseline_ids, self.seeds_baseline),
            ("run", self.run_by_seed, self.run_ids, self.seeds_run),
        ):
            for r, row in enumerate(rows):
                for m, value in enumerate(row):
                    table["side"].append(side)
                    table["run_id"].append(ids[r] if r < len(ids) and len(rows) == len(ids) else "")
                    seed = seeds[r] if r < len(seeds) and len(rows) == len(seeds) else None
                    table["seed"].append(-1 if seed is None else int(seed))
                    table["class"].append(self.classes[m])
                    table["name"].append(self.names[m])
                    table["count"].append(self.counts[m] if self.counts else math.nan)
                    table["acc"].append(value)
        return table

    def seeds_summary(self) -> Table:
        """One row per run: overall and mean-class accuracy; with paired seeds, the run rows also hold
        that seed's overall ΔACC and undistillable count (paper rule on the seed alone)."""
        table: Table = {
            "side": [],
            "seed": [],
            "run_id": [],
            "acc": [],
            "mean_class_acc": [],
            "delta_acc": [],
            "undistillable_count": [],
        }
        pairs = self.pairs
        per_pair: dict[int, tuple[float, float]] = {}
        if pairs is not None:
            counts = self.seed_undistillable_counts
            base_overall, run_overall = self.overall(self.baseline_by_seed), self.overall(self.run_by_seed)
            for k, (i, j) in enumerate(pairs):
                per_pair[i] = (run_overall[i] - base_overall[j], float(counts[k]))
        for side, rows, ids, seeds in (
            ("baseline", self.baseline_by_seed, self.baseline_ids, self.seeds_baseline),
            ("run", self.run_by_seed, self.run_ids, self.seeds_run),
        ):
            overall = self.overall(rows)
            for r, row in enumerate(rows):
                seed = seeds[r] if len(seeds) == len(rows) else None
                table["side"].append(side)
                table["seed"].append(-1 if seed is None else int(seed))
                table["run_id"].append(ids[r] if len(ids) == len(rows) else "")
                table["acc"].append(overall[r])
                table["mean_class_acc"].append(summary(row)[0])
                delta, count = per_pair.get(r, (math.nan, math.nan)) if side == "run" else (math.nan, math.nan)
                table["delta_acc"].append(delta)
                table["undistillable_count"].append(count)
        return table

    def scalars(self) -> dict[str, float]:
        """Undistillable counts (paper rule, beyond seed noise, per seed), mean ΔACC, overall accuracy and its
        test, and Pearson r, p, n when the correlation is defined (NaN values are not logged)."""
        r, p, n = self.pearson
        overall = self.overall_test
        base_mean, base_std, base_n = summary(self.overall(self.baseline_by_seed))
        run_mean, run_std, run_n = summary(self.overall(self.run_by_seed))
        per_seed = summary([float(c) for c in self.seed_undistillable_counts])
        values = {
            "undistillable_count": float(self.undistillable_count),
            "undistillable_fraction": self.undistillable_count / max(1, len(self.classes)),
            "undistillable_significant_count": float(len(self.undistillable_significant)),
            "helped_significant_count": float(len(self.helped_significant)),
            "undistillable_count_per_seed_mean": per_seed[0],
            "undistillable_count_per_seed_std": per_seed[1],
            "mean_delta_acc": self.mean_delta_acc,
            "acc_baseline_mean": base_mean,
            "acc_baseline_std": base_std,
            "acc_run_mean": run_mean,
            "acc_run_std": run_std,
            "seeds_baseline": float(base_n),
            "seeds_run": float(run_n),
            "delta_acc_overall": overall.mean,
            "delta_acc_overall_std": overall.sd,
            "delta_acc_overall_t": overall.t,
            "delta_acc_overall_p": overall.p,
            "delta_acc_overall_ci_low": overall.ci_low,
            "delta_acc_overall_ci_high": overall.ci_high,
        }
        if math.isfinite(r):
            values.update(pearson_r=r, pearson_p=p, pearson_n=float(n))
        return values

    def description(self, baseline: str = "the baseline", runs: str = "the runs") -> str:
        """A short Markdown summary for the comparison's MLflow run."""
        r, p, n = self.pearson
        text = (
            f"Per-class comparison of {runs} against {baseline} on split **{self.split}**"
            f" ({len(self.run_ids)} run(s) and {len(self.baseline_ids)} baseline run(s), seeds averaged):"
            f" **{self.undistillable_count} of {len(self.classes)}** classes undistillable"
            f" (ΔACC < −{self.tol:g}), mean ΔACC **{_num(self.mean_delta_acc, True)}** points"
        )
        text += f", Pearson r(ΔPA, ΔACC) = {r:.2f} (p = {p:.2g}, {n} classes)." if math.isfinite(r) else "."
        if self.test_name != "no test":
            test = self.overall_test
            text += (
                f" Beyond seed noise ({self.test_name}, {self._p_label()} < {self.alpha:g}):"
                f" **{len(self.undistillable_significant)}** classes hurt, {len(self.helped_significant)} helped;"
                f" overall accuracy {_num(test.mean, True)} points (p = {test.p:.2g})."
            )
        return text

    def report(self) -> str:
        """The per-class table with seed statistics, the undistillable classes by the paper's rule and
        beyond seed noise, the overall accuracy and the ΔPA–ΔACC correlation, as text."""
        has_pa = any(math.isfinite(v) for v in self.delta_pa)
        tests, agreement, adjusted = self.class_tests, self.sign_agreement, self.p_adjusted
        width = max([4, *(len(str(n)) for n in self.names)])
        seeds_b, seeds_r = len(self.baseline_by_seed), len(self.run_by_seed)
        head = f"{'class':>5}  {'name':<{width}} {'acc base':>9} {'acc run':>8} {'ΔACC':>7}"
        head += f" {'sd':>5} {'agree':>5} {self._p_label():>8}"
        if has_pa:
            head += f" {'PA base':>8} {'PA run':>7} {'ΔPA':>7}"
        lines = [
            f"split {self.split}, {len(self.classes)} classes, run − baseline in percentage points"
            f" ({seeds_b} baseline run(s), {seeds_r} run(s), averaged over seeds; {self._test_text()})",
            head,
        ]
        undistillable, significant = set(self.undistillable), set(self.undistillable_significant)
        helped = set(self.helped_significant)
        for i, c in enumerate(self.classes):
            agree, total = agreement[i]
            line = (
                f"{c:>5}  {self.names[i]!s:<{width}} {_num(self.acc_baseline[i]):>9} {_num(self.acc_run[i]):>8}"
                f" {_num(self.delta_acc[i], True):>7} {_num(tests[i].sd if self.pairs else math.nan):>5}"
                f" {f'{agree}/{total}' if total > 1 else '-':>5} {_p(adjusted[i]):>8}"
            )
            if has_pa:
                line += f" {_num(self.pa_baseline[i]):>8} {_num(self.pa_run[i]):>7} {_num(self.delta_pa[i], True):>7}"
            mark = ("*" if c in undistillable else "") + ("!" if c in significant else "+" if c in helped else "")
            lines.append(line + (f"  {mark}" if mark else ""))
        lines.append(
            f"undistillable classes (ΔACC < −{self.tol:g}, marked *): "
            f"{self.undistillable_count} of {len(self.classes)}: {self._listed(self.undistillable)}"
        )
        if self.test_name != "no test":
            lines.append(
                f"undistillable beyond seed noise (ΔACC < −{self.tol:g} and {self._p_label()} < {self.alpha:g},"
                f" marked !): {len(significant)} of {len(self.classes)}: {self._listed(self.undistillable_significant)}"
            )
            lines.append(
                f"helped beyond seed noise (marked +): {len(helped)} of {len(self.classes)}:"
                f" {self._listed(self.helped_significant)}"
            )
        counts = self.seed_undistillable_counts
        if len(counts) > 1:
            mean, sd, _ = summary([float(v) for v in counts])
            what = "seed pair" if self.pairs is not None else "run seed against the baseline mean"
            lines.append(
                f"undistillable count of each {what}: {', '.join(str(v) for v in counts)} (mean {mean:.1f} ± {sd:.1f})"
            )
        lines.append(f"mean ΔACC: {_num(self.mean_delta_acc, True)} points")
        lines.append(self._overall_text())
        r, p, n = self.pearson
        if math.isfinite(r):
            lines.append(f"Pearson r(ΔPA, ΔACC) = {r:.3f}, two-sided p = {p:.3g} ({n} classes)")
        else:
            lines.append("Pearson r(ΔPA, ΔACC): n/a (needs per-class agreement of both sides on 3+ classes)")
        lines += power_lines(self, self.power)
        lines += [f"note: {note}" for note in self.notes]
        if self.test_name == "no test":
            lines.append("note: one run on a side: no spread and no test; run several seeds to tell signal from noise")
        return "\n".join(lines)

    def _p_label(self) -> str:
        return {"bh": "p (BH)", "holm": "p (Holm)"}.get(self.correction, "p")

    def _test_text(self) -> str:
        name = self.test_name
        if name == "paired t-test":
            return f"{name} over {len(self.pairs or [])} seeds paired by seed number"
        if name == "Welch t-test":
            return f"{name}: the sides do not share their seeds"
        return name

    def _listed(self, classes: list[int]) -> str:
        return ", ".join(f"{c} ({self.names[self.classes.index(c)]})" for c in classes) or "none"

    def _overall_text(self) -> str:
        base_mean, base_sd, base_n = summary(self.overall(self.baseline_by_seed))
        run_mean, run_sd, run_n = summary(self.overall(self.run_by_seed))
        text = (
            f"accuracy: baseline {_num(base_mean)} ± {_num(base_sd)} %, run {_num(run_mean)} ± {_num(run_sd)} %"
            f" (mean ± std over {base_n} / {run_n} runs)"
        )
        test = self.overall_test
        if test.test == "none":
            return text + f"; Δ {_num(test.mean, True)} points"
        spread = f" ± {_num(test.sd)}" if test.test == "paired" else ""
        return (
            text + f"; Δ {_num(test.mean, True)}{spread} points, {self.test_name} t({test.df:.3g}) = {test.t:.2f},"
            f" p = {test.p:.3g}, {100 * self.confidence:g}% CI [{_num(test.ci_low, True)}, {_num(test.ci_high, True)}]"
        )

    def figures(self) -> dict[str, Any]:
        """``delta_acc`` (sorted bars with the mean line) and, with agreements, ``delta_pa_vs_delta_acc``."""
        figures = {"delta_acc": _delta_acc_figure(self)}
        if self.pearson[2] >= 2:
            figures["delta_pa_vs_delta_acc"] = _scatter_figure(self)
        return figures


def _num(value: float, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.0e}"


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


def compare_tables(
    acc_baseline: Sequence[Sequence[float]],
    acc_run: Sequence[Sequence[float]],
    *,
    pa_baseline: Sequence[Sequence[float]] | None = None,
    pa_run: Sequence[Sequence[float]] | None = None,
    classes: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    tol: float = 0.0,
    split: str = "test",
    seeds_baseline: Sequence[int | None] | None = None,
    seeds_run: Sequence[int | None] | None = None,
    counts: Sequence[float] | None = None,
    alpha: float = 0.05,
    correction: str = "bh",
    confidence: float = 0.95,
) -> Comparison:
    """The comparison from per-seed per-class values (accuracies and agreements in percent).

    ``acc_baseline[s][m]`` is the accuracy of class m in baseline seed s; seeds are averaged per
    class before differencing (the paper's rule), so both sides may have different numbers of seeds.
    ``seeds_*`` (the seed number of each row) pair the sides for paired tests when both hold the same
    seeds; ``counts`` (samples per class) weight the overall accuracy. ``correction`` (``bh``,
    ``holm`` or ``none``) adjusts the classes' p-values; ``alpha`` is the significance level.
    """
    _check_options(tol, alpha, correction, confidence)
    base, mine = average_over_seeds(acc_baseline), average_over_seeds(acc_run)
    if len(base) != len(mine):
        raise CompareError(f"the baseline has {len(base)} classes and the run {len(mine)}")
    count = len(base)
    nan = [math.nan] * count
    pa_b = average_over_seeds(pa_baseline) if pa_baseline else nan
    pa_r = average_over_seeds(pa_run) if pa_run else nan
    if len(pa_b) != count or len(pa_r) != count:
        raise CompareError(f"agreement tables do not have the {count} classes of the accuracy tables")
    classes = list(classes) if classes is not None else list(range(count))
    names = [str(n) for n in names] if names is not None else [str(c) for c in classes]
    for what, seeds, rows in (("seeds_baseline", seeds_baseline, acc_baseline), ("seeds_run", seeds_run, acc_run)):
        if seeds is not None and len(seeds) != len(rows):
            raise CompareError(f"{what}: {len(seeds)} seeds for {len(rows)} rows")
    if counts is not None and len(counts) != count:
        raise CompareError(f"counts: {len(counts)} values for {count} classes")
    if any(len(row) != count for row in [*acc_baseline, *acc_run]):
        raise CompareError(f"every seed's row must have the {count} classes")
    return Comparison(
        classes,
        names,
        base,
        mine,
        pa_b,
        pa_r,
        tol=tol,
        split=split,
        acc_baseline_seeds=[[_float(v) for v in row] for row in acc_baseline],
        acc_run_seeds=[[_float(v) for v in row] for row in acc_run],
        seeds_baseline=list(seeds_baseline) if seeds_baseline is not None else [],
        seeds_run=list(seeds_run) if seeds_run is not None else [],
        counts=[float(c) for c in counts] if counts is not None else [],
        alpha=alpha,
        correction=correction,
        confidence=confidence,
    )


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _check_options(tol: float, alpha: float, correction: str, confidence: float) -> None:
    if tol < 0 or not math.isfinite(tol):
        raise CompareError(f"tol must be a finite number >= 0, got {tol}")
    if not 0 < alpha < 1:
        raise CompareError(f"alpha must be between 0 and 1, got {alpha}")
    if not 0 < confidence < 1:
        raise CompareError(f"confidence must be between 0 and 1, got {confidence}")
    if correction not in CORRECTION_NAMES:
        raise CompareError(f"correction must be one of {', '.join(CORRECTION_NAMES)}, got {correction!r}")


# reading runs from MLflow ----------------------------------------------------------------------------


@dataclass
class _Side:
    infos: list[dict[str, Any]]
    acc: list[list[float]]
    pa: list[list[float]]
    classes: list[int]
    names: list[str]
    seeds: list[int | None] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)


def _read_side(run_ids: Sequence[str], split: str, uri: str | None, what: str) -> _Side:
    from kdhub.tracking import load_table, run_info

    if not run_ids:
        raise CompareError(f"no {what} run given")
    infos, acc, pa, seeds = [], [], [], []
    counts: list[float] = []
    classes: list[int] | None = None
    names: list[str] = []
    for run_id in run_ids:
        try:
            info = run_info(run_id, uri)
        except KdhubError as err:
            raise CompareError(f"{what} {err}") from None
        infos.append(info)
        label = f"run {run_id} ({info['name']})"
        try:
            table = load_table(run_id, f"{split}/{PER_CLASS_ACCURACY.name}", uri)
        except KdhubError:
            raise CompareError(
                f"{label} has no table {split}/{PER_CLASS_ACCURACY.name}; add the {PER_CLASS_ACCURACY.name} metric"
                f" (metrics: [{{name: {PER_CLASS_ACCURACY.name}, split: {split}}}])"
            ) from None
        if ACCURACY_COLUMN not in table or "class" not in table:
            raise CompareError(
                f"{label}: table {split}/{PER_CLASS_ACCURACY.name} has no columns class and {ACCURACY_COLUMN}"
            )
        these = [int(c) for c in table["class"]]
        if classes is None:
            classes, names = these, [str(n) for n in table.get("name", these)]
        elif these != classes:
            raise CompareError(f"{label} has {len(these)} classes, the first {what} run {len(classes)}")
        acc.append([float(v) for v in table[ACCURACY_COLUMN]])
        seeds.append(_seed(info))
        if not counts and "count" in table:
            counts = [float(v) for v in table["count"]]
        try:
            agreement = load_table(run_id, f"{split}/{AGREEMENT.name}", uri)
        except KdhubError:
            continue
        if [int(c) for c in agreement.get("class", [])] == classes and AGREEMENT_COLUMN in agreement:
            pa.append([AGREEMENT_SCALE * float(v) for v in agreement[AGREEMENT_COLUMN]])
    assert classes is not None
    return _Side(infos, acc, pa, classes, names, seeds, counts)


def _seed(info: dict[str, Any]) -> int | None:
    """The run's seed (param ``seed``, else tag ``seed``), None if it has none."""
    value = info["params"].get("seed", info["tags"].get("seed"))
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_SEED_SUFFIX = re.compile(r"-s\d+$")


def _label(infos: list[dict[str, Any]]) -> str:
    names = []
    for info in infos:
        name = _SEED_SUFFIX.sub("", info["name"] or info["run_id"][:8])
        if name not in names:
            names.append(name)
    return "+".join(names)


def _teachers(side: _Side) -> set[str]:
    return {i["params"].get("teacher.weights", "") for i in side.infos if i["tags"].get("teacher", "none") != "none"}


def _notes(baseline: _Side, runs: _Side, split: str) -> list[str]:
    notes = []
    if not runs.pa:
        notes.append(f"the runs have no table {split}/{AGREEMENT.name}: add the {AGREEMENT.name} metric for ΔPA")
    if not baseline.pa:
        notes.append(
            f"the baseline has no table {split}/{AGREEMENT.name}: train it with the teacher attached for"
            f" evaluation (teacher: ..., methods: []) and the {AGREEMENT.name} metric to get ΔPA"
        )
    for side, what in ((baseline, "baseline"), (runs, "run")):
        if side.pa and len(side.pa) < len(side.infos):
            notes.append(f"PA of the {what} side averages {len(side.pa)} of its {len(side.infos)} runs")
    if len(baseline.infos) > 1 and len(runs.infos) > 1 and pair_by_seed(runs.seeds, baseline.seeds) is None:
        notes.append(
            "the sides do not hold the same distinct seeds: tests are Welch's (unpaired);"
            " run both sides with the same seeds for paired tests"
        )
    b_teachers, r_teachers = _teachers(baseline), _teachers(runs)
    if b_teachers and r_teachers and b_teachers != r_teachers:
        notes.append("the baseline and the runs were evaluated against different teacher weights")
    return notes


def compare_runs(
    baseline: str | list[str],
    runs: str | list[str],
    *,
    uri: str | None = None,
    split: str = "test",
    tol: float = 0.0,
    log: bool = True,
    experiment: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    alpha: float = 0.05,
    correction: str = "bh",
    confidence: float = 0.95,
    power: float = DEFAULT_POWER,
) -> Comparison:
    """Compare a run (or the seeds of one run) with a baseline run (or its seeds), per class.

    Reads ``<split>/per_class_accuracy`` (required) and ``<split>/agreement`` (optional) of every
    run from MLflow. With ``log``, records the comparison as a new MLflow run (in ``experiment``,
    default ``<first run's experiment>-compare``, so it does not crowd the training charts) holding
    the table ``compare/per_class``, the scalars ``undistillable_count``, ``mean_delta_acc``,
    ``pearson_r``, ``pearson_p``, the figures and the text report; ``tags`` are added to its tags
    (``mlflow.parentRunId`` nests it). The seed statistics (``alpha``, ``correction``,
    ``confidence``) go to the same table, the tables ``compare/per_seed`` (every input value) and
    ``compare/seeds`` (one row per run) and the scalars.
    """
    from kdhub.tracking import compare_experiment

    _check_options(tol, alpha, correction, confidence)
    if not 0 < power < 1:
        raise CompareError(f"power: {power} is outside (0, 1)")
    baseline_ids = [baseline] if isinstance(baseline, str) else list(baseline)
    run_ids = [runs] if isinstance(runs, str) else list(runs)
    base_side = _read_side(baseline_ids, split, uri, "baseline")
    run_side = _read_side(run_ids, split, uri, "run")
    if base_side.classes != run_side.classes:
        raise CompareError(
            f"the baseline has {len(base_side.classes)} classes and the runs {len(run_side.classes)}: not comparable"
        )
    comparison = compare_tables(
        base_side.acc,
        run_side.acc,
        pa_baseline=base_side.pa or None,
        pa_run=run_side.pa or None,
        classes=run_side.classes,
        names=run_side.names,
        tol=tol,
        split=split,
        seeds_baseline=base_side.seeds,
        seeds_run=run_side.seeds,
        counts=run_side.counts or base_side.counts or None,
        alpha=alpha,
        correction=correction,
        confidence=confidence,
    )
    comparison.baseline_ids, comparison.run_ids = baseline_ids, run_ids
    comparison.power = power
    comparison.notes = _notes(base_side, run_side, split)
    if log:
        description = comparison.description(_links(base_side.infos), _links(run_side.infos))
        comparison.run_id = _log(
            comparison,
            uri,
            experiment or compare_experiment(run_side.infos[0]["experiment"]),
            run_name or f"compare-{_label(run_side.infos)}-vs-{_label(base_side.infos)}",
            tags or {},
            description,
        )
    return comparison


def _links(infos: list[dict[str, Any]]) -> str:
    """Markdown links to runs in the MLflow UI."""
    return ", ".join(
        f"[{i['name'] or i['run_id'][:8]}](#/experiments/{i['experiment_id']}/runs/{i['run_id']})" for i in infos
    )


def _log(
    comparison: Comparison, uri: str | None, experiment: str, run_name: str, tags: dict[str, str], description: str
) -> str:
    from kdhub.tracking import KIND_TAG, Tracker

    tracker = Tracker(uri, experiment)
    run_tags = {
        KIND_TAG: "compare",
        "kdhub.compare": "true",
        "kdhub.baseline": ",".join(comparison.baseline_ids),
        "kdhub.runs": ",".join(comparison.run_ids),
        "kdhub.split": comparison.split,
        **tags,
    }
    run_id = tracker.start(run_name, run_tags)
    try:
        tracker.params(
            {
                "split": comparison.split,
                "tol": comparison.tol,
                "baseline_runs": len(comparison.baseline_ids),
                "runs": len(comparison.run_ids),
                "test": comparison.test_name,
                "correction": comparison.correction,
                "alpha": comparison.alpha,
                "confidence": comparison.confidence,
            }
        )
        tracker.table("compare/per_class", comparison.table())
        tracker.table("compare/per_seed", comparison.seed_table())
        tracker.table("compare/seeds", comparison.seeds_summary())
        tracker.table("compare/power", power_table(comparison, comparison.power))
        tracker.metrics({k: v for k, v in comparison.scalars().items() if math.isfinite(v)}, step=0)
        for name, figure in comparison.figures().items():
            tracker.figure(f"compare/{name}", figure)
        tracker.text("compare/report.txt", comparison.report() + "\n")
        tracker.describe(description)
    except BaseException as err:
        tracker.finish("FAILED", f"{type(err).__name__}: {err}")
        raise
    tracker.finish("FINISHED")
    return run_id


# figures ------------------------------------------------------------------------------------------


def _delta_acc_figure(comparison: Comparison) -> Any:
    """Per-class ΔACC sorted from the most helped to the most hurt class, with the mean as a dashed line."""
    deltas = comparison.delta_acc
    order = sorted((i for i in range(len(deltas)) if math.isfinite(deltas[i])), key=lambda i: -deltas[i])
    n = len(order)
    fig, (ax,) = new_figure(max(5.0, min(14.0, 0.3 * n + 2.5)), 3.6)
    hurt = set(comparison.undistillable)
    significant = set(comparison.undistillable_significant) | set(comparison.helped_significant)
    values = [deltas[i] for i in order]
    colors = ["C3" if comparison.classes[i] in hurt else "C0" for i in order]
    edges = ["black" if comparison.classes[i] in significant else "none" for i in order]
    ax.bar(range(n), values, 0.8, color=colors, edgecolor=edges, linewidth=1.6)
    tests = comparison.class_tests
    if comparison.test_name != "no test":
        low = [values[k] - tests[i].ci_low if math.isfinite(tests[i].ci_low) else 0.0 for k, i in enumerate(order)]
        high = [tests[i].ci_high - values[k] if math.isfinite(tests[i].ci_high) else 0.0 for k, i in enumerate(order)]
        ax.errorbar(
            range(n),
            values,
            yerr=[[max(0.0, v) for v in low], [max(0.0, v) for v in high]],
            fmt="none",
            ecolor="black",
            elinewidth=1,
            capsize=3,
            label=f"{100 * comparison.confidence:g}% CI ({comparison.test_name})",
        )
        deltas_by_seed = comparison.seed_deltas
        xs = [k for k, i in enumerate(order) for row in deltas_by_seed if math.isfinite(row[i])]
        ys = [row[i] for i in order for row in deltas_by_seed if math.isfinite(row[i])]
        what = "per seed pair" if comparison.pairs is not None else "per run seed"
        ax.scatter(xs, ys, s=9, color="0.3", zorder=3, label=f"ΔACC {what}")
    ax.axhline(0, color="black", linewidth=0.6)
    mean = comparison.mean_delta_acc
    if math.isfinite(mean):
        ax.axhline(mean, color="black", linestyle="--", linewidth=1.2, label=f"mean ΔACC {mean:+.2f}")
    if comparison.tol > 0:
        ax.axhline(-comparison.tol, color="C3", linestyle=":", linewidth=1, label=f"−tol = −{comparison.tol:g}")
    if n <= 40:
        ax.set_xticks(range(n), [comparison.names[i] for i in order], rotation=60, ha="right", fontsize=8)
    else:
        ax.set_xticks([])
    ax.set_xlabel("class (sorted by ΔACC)")
    ax.set_ylabel("ΔACC = acc(run) − acc(baseline), points")
    title = f"{comparison.undistillable_count} of {len(deltas)} classes undistillable (red)"
    if comparison.test_name != "no test":
        title += (
            f"\n{len(comparison.undistillable_significant)} hurt and {len(comparison.helped_significant)} helped"
            f" beyond seed noise (outlined, {comparison._p_label()} < {comparison.alpha:g})"
        )
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right")
    return fig


def _scatter_figure(comparison: Comparison) -> Any:
    """ΔPA (x) against ΔACC (y) per class, the least-squares line, and r / p in the title."""
    import numpy as np

    dpa, dacc = comparison.delta_pa, comparison.delta_acc
    keep = [i for i in range(len(dpa)) if math.isfinite(dpa[i]) and math.isfinite(dacc[i])]
    x, y = np.array([dpa[i] for i in keep]), np.array([dacc[i] for i in keep])
    fig, (ax,) = new_figure(4.8, 4.2)
    hurt = set(comparison.undistillable)
    colors = ["C3" if comparison.classes[i] in hurt else "C0" for i in keep]
    ax.scatter(x, y, c=colors, s=22, zorder=3)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.axvline(0, color="grey", linewidth=0.6)
    if len(keep) >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 2)
        ax.plot(xs, slope * xs + intercept, color="black", linewidth=1, label=f"fit: slope {slope:.2f}")
        ax.legend(fontsize=8, loc="lower right")
    if len(keep) <= 20:
        for j, i in enumerate(keep):
            ax.annotate(comparison.names[i], (x[j], y[j]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    r, p, n = comparison.pearson
    title = f"Pearson r = {r:.2f}, p = {p:.2g}, {n} classes" if math.isfinite(r) else f"r n/a ({n} classes)"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("ΔPA = PA(run) − PA(baseline), points")
    ax.set_ylabel("ΔACC, points")
    return fig


# command line -------------------------------------------------------------------------------------


def _ids(values: list[str]) -> list[str]:
    return [v for item in values for v in item.split(",") if v]


def save_figures(comparison: Comparison, prefix: str, dpi: int = 100) -> list[Path]:
    """Save the figures as ``<prefix><name>.png`` (``<name>.png`` inside ``prefix`` if it is a folder or ends in /)."""
    folder = Path(prefix)
    if prefix.endswith(("/", os.sep)) or folder.is_dir():
        stem = ""
    else:
        folder, stem = folder.parent, folder.name
    paths = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, figure in comparison.figures().items():
            paths.append(folder / f"{stem}{name}.png")
            figure.savefig(paths[-1], dpi=dpi)
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or err
        raise KdhubError(f"--figures {prefix}: cannot write the figures: {reason}") from None
    return paths


MAX_DPI = 1200


def _check_output(args: argparse.Namespace) -> None:
    """Refuse bad --dpi / --tol / --figures before anything is read or logged."""
    if not 10 <= args.dpi <= MAX_DPI:
        raise KdhubError(f"--dpi: {args.dpi} is outside 10 .. {MAX_DPI}")
    if not (math.isfinite(args.tol) and args.tol >= 0):
        raise KdhubError(f"--tol: {args.tol} is not a finite number >= 0")
    if args.figures:
        folder = Path(args.figures)
        if not (args.figures.endswith(("/", os.sep)) or folder.is_dir()):
            folder = folder.parent
        existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise KdhubError(f"--figures {args.figures}: {existing} is not a writable folder")


class CompareCommand(kdhub.Command):
    """Per-class ΔACC, undistillable classes and ΔPA of runs against a baseline run."""

    name = "compare"
    help = "per-class ΔACC, undistillable classes and ΔPA of runs against a baseline run"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Compare runs with a baseline per class (run − baseline; seeds averaged before differencing)."
        )
        parser.add_argument(
            "--baseline",
            "-b",
            action="append",
            required=True,
            metavar="RUN[,RUN...]",
            help="baseline run id; repeat it or separate ids by commas for several seeds",
        )
        parser.add_argument(
            "runs", nargs="+", metavar="RUN", help="run ids compared with the baseline (seeds of one run)"
        )
        parser.add_argument(
            "--split", default="test", choices=["train", "val", "test"], help="split of the tables (test)"
        )
        parser.add_argument("--tol", type=float, default=0.0, help="undistillable iff ΔACC < −tol, in points (0)")
        parser.add_argument(
            "--alpha", type=float, default=0.05, help="significance level of the per-class and overall tests (0.05)"
        )
        parser.add_argument(
            "--correction",
            choices=list(CORRECTION_NAMES),
            default="bh",
            help="multiple-testing correction over the classes: bh (Benjamini-Hochberg, default), holm, none",
        )
        parser.add_argument(
            "--power",
            type=float,
            default=DEFAULT_POWER,
            help="power of the smallest detectable effect per class in the report (0.8)",
        )
        parser.add_argument("--no-log", action="store_true", help="do not log the comparison as an MLflow run")
        parser.add_argument(
            "--experiment",
            help="MLflow experiment of the comparison run (default: <the first run's experiment>-compare)",
        )
        parser.add_argument(
            "--figures",
            metavar="PREFIX",
            help="also save the figures as PNG files: PREFIX<name>.png, or <name>.png inside PREFIX if it is a folder",
        )
        parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNG files of --figures (100)")
        parser.add_argument(
            "--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
        )

    def run(self, args: argparse.Namespace) -> int:
        _check_output(args)
        comparison = compare_runs(
            _ids(args.baseline),
            _ids(args.runs),
            uri=args.tracking_uri,
            split=args.split,
            tol=args.tol,
            log=not args.no_log,
            experiment=args.experiment,
            alpha=args.alpha,
            correction=args.correction,
            power=args.power,
        )
        print(comparison.report())
        if args.figures:
            for path in save_figures(comparison, args.figures, args.dpi):
                print(f"figure {path}")
        if comparison.run_id is not None:
            print(f"logged as MLflow run {comparison.run_id}")
        return 0

    def compare(self, baseline: str | list[str], runs: str | list[str], **options: Any) -> Comparison:
        """:func:`compare_runs` for callers that reach the command through the registry (a study's ``compare:``)."""
        return compare_runs(baseline, runs, **options)
