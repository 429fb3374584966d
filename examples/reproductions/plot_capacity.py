"""Figure of reproduction (c): student accuracy against teacher capacity, per training regime.

    python examples/reproductions/plot_capacity.py --tracking-uri sqlite:////tmp/repro/mlflow.db \\
        --parent <study run id>=82.6 --parent <study run id>=85.4 --parent <study run id>=86.2 \\
        --teacher-label "[64]" --teacher-label "[256, 256]" --teacher-label "[1024, 1024]" \\
        --out docs/figures/repro_capacity.png

Each ``--parent`` is one invocation of fashion_capacity_eskd.yaml (its parent run id) with the
teacher's test accuracy after ``=``; the figure shows, per teacher, the mean test accuracy of every
run group of that study (vanilla, kd, eskd[...]) with its 95 % t confidence interval over seeds.
"""

from __future__ import annotations

import argparse
import math
import statistics

from scipy.stats import t as student_t
from summarize import study_runs

from kdhub_analysis.stats import paired_t


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t confidence interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, float(student_t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def main() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", default="kdhub-reproductions")
    parser.add_argument("--parent", action="append", required=True, metavar="RUN_ID=TEACHER_ACC")
    parser.add_argument("--teacher-label", action="append", default=[])
    parser.add_argument("--metric", default="test/acc_last")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    series: dict[str, list[tuple[int, float, float]]] = {}
    by_seed: dict[str, list[dict[int, float]]] = {}
    ticks = []
    for i, spec in enumerate(args.parent):
        parent, _, accuracy = spec.partition("=")
        _, groups = study_runs(args.tracking_uri, args.experiment, None, parent)
        label = args.teacher_label[i] if i < len(args.teacher_label) else parent[:8]
        ticks.append(f"{label}\n{float(accuracy):.1f} %" if accuracy else label)
        for group, items in sorted(groups.items()):
            values = [m[args.metric] for _, _, m in items if args.metric in m]
            by_seed.setdefault(group, []).append({seed: m[args.metric] for seed, _, m in items if args.metric in m})
            if values:
                mean, half = interval(values)
                series.setdefault(group, []).append((i, mean, half))
                print(f"{label:>14} {group:<20} {mean:.2f} ± {half:.2f} (95 % CI, n = {len(values)})")
    for group, studies in sorted(by_seed.items()):
        if len(studies) >= 2:  # the smallest teacher against the largest, seeds paired by number
            first, last = studies[0], studies[-1]
            seeds = sorted(set(first) & set(last))
            test = paired_t([last[s] for s in seeds], [first[s] for s in seeds])
            print(
                f"{group}: last teacher - first teacher = {test.mean:+.2f} ± {test.sd:.2f} points,"
                f" paired t({test.df:g}) = {test.t:.2f}, p = {test.p:.3g} ({len(seeds)} seeds)"
            )
    for k, (group, points) in enumerate(sorted(series.items())):
        offset = (k - (len(series) - 1) / 2) * 0.08
        xs = [i + offset for i, _, _ in points]
        ax.errorbar(xs, [m for _, m, _ in points], yerr=[h for _, _, h in points], marker="o", capsize=3, label=group)
    ax.set_xticks(range(len(ticks)), ticks)
    ax.set_xlabel("teacher (hidden layers, test accuracy)")
    ax.set_ylabel(f"student {args.metric} (%)")
    ax.set_title("student accuracy by teacher capacity (mean, 95 % CI over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(args.out, dpi=100)
    print(f"figure {args.out}")


if __name__ == "__main__":
    main()
