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
the same test. The statistics are in :mod:`kdhub_analysis.comparison_stats`, the text, tables
and figures in :mod:`kdhub_analysis.comparison_report`, reading the runs in
:mod:`kdhub_analysis.comparison_tables`. Accuracies come from the table
:data:`kdhub.PER_CLASS_ACCURACY` (``<split>/per_class_accuracy``, column ``student``, logged by
the ``per_class_accuracy`` metric); agreements from :data:`kdhub.AGREEMENT`
(``<split>/agreement``, column ``pa_by_label``, in percent like the accuracies).
A vanilla baseline has an agreement only if it was trained with the teacher attached for
evaluation (``teacher:`` set, ``methods: []``: the engine never runs the teacher in training then).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

import kdhub
from kdhub.contract.errors import KdhubError
from kdhub_analysis.comparison_report import Comparison, save_figures
from kdhub_analysis.comparison_stats import (
    CORRECTION_NAMES,
    DEFAULT_POWER,
    CompareError,
    average_over_seeds,
    pearson,
)
from kdhub_analysis.comparison_tables import compare_runs, compare_tables

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


# command line -------------------------------------------------------------------------------------


def _ids(values: list[str]) -> list[str]:
    return [v for item in values for v in item.split(",") if v]


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
