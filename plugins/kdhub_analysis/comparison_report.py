"""A comparison as text, tables and figures: the per-class table, the report ``kdhub compare`` prints,
the scalars and tables logged to MLflow, and the ΔACC and ΔPA-vs-ΔACC figures."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from kdhub.contract.errors import KdhubError
from kdhub.contract.figures import new_figure
from kdhub.contract.runlog import Table
from kdhub_analysis.comparison_stats import ComparisonStats
from kdhub_analysis.power import power_lines
from kdhub_analysis.stats import summary

__all__ = ["Comparison", "save_figures"]


class Comparison(ComparisonStats):
    """Per-class values of a run (group) against a baseline (group), in percent; see :mod:`kdhub_analysis.compare`."""

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
