"""``kdhub compare``: per-class comparison of runs against a baseline — ΔACC, undistillable classes, ΔPA.

Zhu et al., "Teach Less, Learn More: On the Undistillable Classes in Knowledge Distillation",
NeurIPS 2022, Eq. 1-3 and Figures 2 and 4. kdhub differences everything as *run − baseline*, so a
positive ΔACC means distillation helped the class (the paper's Eq. 1 writes the opposite order but
reads it the same way)::

    ΔACC_m = acc_m(run) − acc_m(baseline)         class m is undistillable iff ΔACC_m < −tol
    ΔPA_m  = PA_m(run) − PA_m(baseline)            PA_m: top-1 agreement with the teacher on class m

With several runs per side (seeds), per-class values are averaged over the seeds first (NaN, an
empty class, left out), then differenced. Accuracies come from the table
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

    def table(self) -> Table:
        undistillable = set(self.undistillable)
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
        }

    def scalars(self) -> dict[str, float]:
        """Undistillable count and fraction, mean ΔACC, and Pearson r, p, n when the correlation is defined."""
        r, p, n = self.pearson
        values = {
            "undistillable_count": float(self.undistillable_count),
            "undistillable_fraction": self.undistillable_count / max(1, len(self.classes)),
            "mean_delta_acc": self.mean_delta_acc,
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
        return text

    def report(self) -> str:
        """The per-class table, the undistillable classes, mean ΔACC and the correlation, as text."""
        has_pa = any(math.isfinite(v) for v in self.delta_pa)
        width = max([4, *(len(str(n)) for n in self.names)])
        head = f"{'class':>5}  {'name':<{width}} {'acc base':>9} {'acc run':>8} {'ΔACC':>7}"
        if has_pa:
            head += f" {'PA base':>8} {'PA run':>7} {'ΔPA':>7}"
        lines = [
            f"split {self.split}, {len(self.classes)} classes, run − baseline in percentage points"
            f" ({len(self.baseline_ids)} baseline run(s), {len(self.run_ids)} run(s), averaged over seeds)",
            head,
        ]
        undistillable = set(self.undistillable)
        for i, c in enumerate(self.classes):
            line = (
                f"{c:>5}  {self.names[i]!s:<{width}} {_num(self.acc_baseline[i]):>9} {_num(self.acc_run[i]):>8}"
                f" {_num(self.delta_acc[i], True):>7}"
            )
            if has_pa:
                line += f" {_num(self.pa_baseline[i]):>8} {_num(self.pa_run[i]):>7} {_num(self.delta_pa[i], True):>7}"
            lines.append(line + ("  *" if c in undistillable else ""))
        listed = ", ".join(f"{c} ({self.names[self.classes.index(c)]})" for c in self.undistillable) or "none"
        lines.append(
            f"undistillable classes (ΔACC < −{self.tol:g}, marked *): "
            f"{self.undistillable_count} of {len(self.classes)}: {listed}"
        )
        lines.append(f"mean ΔACC: {_num(self.mean_delta_acc, True)} points")
        r, p, n = self.pearson
        if math.isfinite(r):
            lines.append(f"Pearson r(ΔPA, ΔACC) = {r:.3f}, two-sided p = {p:.3g} ({n} classes)")
        else:
            lines.append("Pearson r(ΔPA, ΔACC): n/a (needs per-class agreement of both sides on 3+ classes)")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

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
) -> Comparison:
    """The comparison from per-seed per-class values (accuracies and agreements in percent).

    ``acc_baseline[s][m]`` is the accuracy of class m in baseline seed s; seeds are averaged per
    class before differencing, so both sides may have different numbers of seeds.
    """
    if tol < 0 or not math.isfinite(tol):
        raise CompareError(f"tol must be a finite number >= 0, got {tol}")
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
    return Comparison(classes, names, base, mine, pa_b, pa_r, tol=tol, split=split)


# reading runs from MLflow ----------------------------------------------------------------------------


@dataclass
class _Side:
    infos: list[dict[str, Any]]
    acc: list[list[float]]
    pa: list[list[float]]
    classes: list[int]
    names: list[str]


def _read_side(run_ids: Sequence[str], split: str, uri: str | None, what: str) -> _Side:
    from kdhub.tracking import load_table, run_info

    if not run_ids:
        raise CompareError(f"no {what} run given")
    infos, acc, pa = [], [], []
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
        try:
            agreement = load_table(run_id, f"{split}/{AGREEMENT.name}", uri)
        except KdhubError:
            continue
        if [int(c) for c in agreement.get("class", [])] == classes and AGREEMENT_COLUMN in agreement:
            pa.append([AGREEMENT_SCALE * float(v) for v in agreement[AGREEMENT_COLUMN]])
    assert classes is not None
    return _Side(infos, acc, pa, classes, names)


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
) -> Comparison:
    """Compare a run (or the seeds of one run) with a baseline run (or its seeds), per class.

    Reads ``<split>/per_class_accuracy`` (required) and ``<split>/agreement`` (optional) of every
    run from MLflow. With ``log``, records the comparison as a new MLflow run (in ``experiment``,
    default ``<first run's experiment>-compare``, so it does not crowd the training charts) holding
    the table ``compare/per_class``, the scalars ``undistillable_count``, ``mean_delta_acc``,
    ``pearson_r``, ``pearson_p``, the figures and the text report; ``tags`` are added to its tags
    (``mlflow.parentRunId`` nests it).
    """
    from kdhub.tracking import compare_experiment

    if tol < 0 or not math.isfinite(tol):
        raise CompareError(f"tol must be a finite number >= 0, got {tol}")
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
    )
    comparison.baseline_ids, comparison.run_ids = baseline_ids, run_ids
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
            }
        )
        tracker.table("compare/per_class", comparison.table())
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
    values = [deltas[i] for i in order]
    colors = ["C3" if comparison.classes[i] in hurt else "C0" for i in order]
    ax.bar(range(n), values, 0.8, color=colors)
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
    ax.set_title(f"{comparison.undistillable_count} of {len(deltas)} classes undistillable (red)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper right")
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
