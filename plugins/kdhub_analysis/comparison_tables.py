"""The tables a comparison reads: per-class accuracies (and agreements with the teacher) per seed, given
as numbers (:func:`compare_tables`) or read from the runs in MLflow (:func:`compare_runs`), which also
logs the comparison as a run of its own."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kdhub.contract.errors import KdhubError
from kdhub.contract.tables import AGREEMENT, PER_CLASS_ACCURACY
from kdhub_analysis.comparison_report import Comparison
from kdhub_analysis.comparison_stats import DEFAULT_POWER, CompareError, _check_options, average_over_seeds
from kdhub_analysis.power import power_table
from kdhub_analysis.stats import pair_by_seed

__all__ = ["ACCURACY_COLUMN", "AGREEMENT_COLUMN", "agreement_percent", "compare_runs", "compare_tables"]

ACCURACY_COLUMN = "student"  # per-class accuracy in %
AGREEMENT_COLUMN = "pa_by_label"  # per-class prediction agreement with the teacher, percent


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


def agreement_percent(values: list[float]) -> list[float]:
    """Per-class agreements in percent. The agreement metric logs percent; earlier kdhub versions logged
    fractions, recognised as a table with no value above 1 (a percent table with every class at 1 % or
    less is not a trained student's) and scaled by 100."""
    finite = [v for v in values if math.isfinite(v)]
    return [100.0 * v for v in values] if finite and max(finite) <= 1.0 else values


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
            pa.append(agreement_percent([float(v) for v in agreement[AGREEMENT_COLUMN]]))
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
