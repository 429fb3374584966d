"""Summarise a finished study of docs/reproductions.md: mean ± std over seeds per run, and comparisons.

    python examples/reproductions/summarize.py --tracking-uri sqlite:////tmp/repro/mlflow.db \\
        --study fashion-undistillable-5seeds --metric test/acc_last --metric test/agreement/pa \\
        --compare vanilla kd --compare kd tllm --figures docs/figures/repro_

Runs are grouped by their study name (``kd``, ``kd[width=16]``, ...; the ``-s<seed>`` suffix is
dropped); ``--compare A B`` runs ``kdhub compare`` with group A as the baseline and group B as the
runs (paired seeds, BH-corrected per-class tests) and prints its report; ``--figures PREFIX``
saves each comparison's figures as ``PREFIX<A>_vs_<B>_<figure>.png``. Without ``--study``, the most
recent study of the experiment is used.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from collections import defaultdict

import mlflow

from kdhub_analysis.compare import compare_runs, save_figures

SEED = re.compile(r"-s(\d+)$")


def study_runs(
    uri: str, experiment: str, study: str | None, parent_id: str | None = None
) -> tuple[str, dict[str, list[tuple[int, str, dict]]]]:
    """(parent run id, group name -> [(seed, run id, metrics)]) of the latest study run with that name
    (or of the study run ``parent_id``)."""
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no experiment {experiment!r} in {uri}")
    filter_string = "tags.`kdhub.study` != ''" if study is None else f"tags.`kdhub.study` = '{study}'"
    runs = client.search_runs([found.experiment_id], filter_string, max_results=5000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    if parent_id is not None:
        parents = [r for r in parents if r.info.run_id == parent_id]
    if not parents:
        raise SystemExit(f"no study {study or ''} in experiment {experiment!r}")
    parent = max(parents, key=lambda r: r.info.start_time)
    groups: dict[str, list[tuple[int, str, dict]]] = defaultdict(list)
    for run in runs:
        if run.data.tags.get("mlflow.parentRunId") != parent.info.run_id or "kdhub.compare" in run.data.tags:
            continue
        if run.info.status != "FINISHED":  # running, killed or failed: not a seed to summarise yet
            continue
        name = run.info.run_name or run.info.run_id
        match = SEED.search(name)
        seed = int(match.group(1)) if match else -1
        groups[SEED.sub("", name)].append((seed, run.info.run_id, dict(run.data.metrics)))
    for values in groups.values():
        values.sort()
    return parent.info.run_id, dict(groups)


def spread(values: list[float]) -> str:
    kept = [v for v in values if math.isfinite(v)]
    if not kept:
        return "-"
    if len(kept) == 1:
        return f"{kept[0]:.4g}"
    return f"{statistics.fmean(kept):.4g} ± {statistics.stdev(kept):.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", default="kdhub-reproductions")
    parser.add_argument("--study", help="study name (default: the latest study of the experiment)")
    parser.add_argument("--parent", help="the study's parent run id (default: its latest run)")
    parser.add_argument("--metric", action="append", default=[], help="metric to summarise (repeatable)")
    parser.add_argument("--compare", nargs=2, action="append", default=[], metavar=("BASELINE", "RUNS"))
    parser.add_argument("--correction", default="bh", choices=["bh", "holm", "none"])
    parser.add_argument("--figures", metavar="PREFIX", help="save the comparisons' figures with this prefix")
    args = parser.parse_args()
    metrics = args.metric or ["test/acc_last"]
    parent, groups = study_runs(args.tracking_uri, args.experiment, args.study, args.parent)
    print(f"study run {parent}: {sum(len(v) for v in groups.values())} runs")
    width = max(len(g) for g in groups)
    print(f"{'run':<{width}}  seeds  " + "  ".join(f"{m:>22}" for m in metrics))
    for group, items in groups.items():
        cells = [spread([m.get(metric, math.nan) for _, _, m in items]) for metric in metrics]
        print(f"{group:<{width}}  {len(items):>5}  " + "  ".join(f"{c:>22}" for c in cells))
    for baseline, runs in args.compare:
        for name in (baseline, runs):
            if name not in groups:
                raise SystemExit(f"--compare: no run group {name!r}; groups: {', '.join(groups)}")
        comparison = compare_runs(
            [r for _, r, _ in groups[baseline]],
            [r for _, r, _ in groups[runs]],
            uri=args.tracking_uri,
            log=False,
            correction=args.correction,
        )
        print(f"\n=== {runs} against {baseline}\n{comparison.report()}")
        if args.figures:
            stem = re.sub(r"[^A-Za-z0-9_=-]", "", f"{baseline}_vs_{runs}")
            for path in save_figures(comparison, f"{args.figures}{stem}_"):
                print(f"figure {path}")


if __name__ == "__main__":
    main()
