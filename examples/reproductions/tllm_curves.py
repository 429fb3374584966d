"""What TLLM did in a study of docs/reproductions.md: the classes it stopped in each seed, and the teaching
curves (validation KD loss per class and epoch) of the classes that matter, averaged over seeds.

    python examples/reproductions/tllm_curves.py --tracking-uri sqlite:////tmp/repro/mlflow.db \\
        --study fashion-cnn-tllm --run tllm --run tllm_paper --classes 0 6 --window 3 --end 9 \\
        --figure docs/figures/repro_fashion_cnn_tllm_curves.png

For every run group (``--run``, the study's run names, the ``-s<seed>`` suffix dropped) it prints the
stopped classes of each seed with their stop epochs (the ``tllm_stopped`` table), how many seeds
stopped each class, and for each class the mean over seeds of its curve's relative drop over the last
``--window`` epochs before ``--end`` (the least-squares fit that kdhub's trend criterion uses:
``d = -slope * K / mean``; 0 = flat, negative = rising) with its standard deviation over seeds. The
figure shows the curves of ``--classes`` (thin: each seed, thick: the mean) divided by each class's
loss at the first epoch, against the median of the other classes.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import Counter

from summarize import study_runs

from kdhub.tracking import load_table


def relative_drop(values: list[float]) -> float:
    """-slope * K / mean of a least-squares line through K + 1 points (kdhub's trend criterion's d)."""
    n = len(values)
    if n < 2 or any(not math.isfinite(v) for v in values):
        return math.nan
    xs = list(range(n))
    mx, my = statistics.fmean(xs), statistics.fmean(values)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, values, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return -slope * (n - 1) / my if my else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", default="kdhub-reproductions")
    parser.add_argument("--study", required=True)
    parser.add_argument("--parent", help="the study's parent run id (default: its latest run)")
    parser.add_argument("--run", action="append", required=True, help="a TLLM run group of the study (repeatable)")
    parser.add_argument("--classes", type=int, nargs="*", default=[], help="classes whose curves are drawn")
    parser.add_argument("--window", type=int, default=3, help="K: epochs of the drop printed per class (3)")
    parser.add_argument("--end", type=int, help="last epoch of that window (default: the last epoch)")
    parser.add_argument("--figure", help="PNG of the curves of --classes (of the first --run)")
    args = parser.parse_args()
    _, groups = study_runs(args.tracking_uri, args.experiment, args.study, args.parent)
    drawn: dict[int, list[list[float]]] = {}
    others: list[list[float]] = []
    epochs: list[int] = []
    for name in args.run:
        if name not in groups:
            raise SystemExit(f"--run: no run group {name!r}; groups: {', '.join(groups)}")
        print(f"\n=== {name}: stopped classes per seed (class@epoch)")
        stops: Counter[str] = Counter()
        drops: dict[str, list[float]] = {}
        counts = []
        for seed, run_id, metrics in groups[name]:
            if "test/acc_last" not in metrics:  # still running
                continue
            stopped = load_table(run_id, "tllm_stopped", args.tracking_uri)
            pairs = [f"{n}@{int(e)}" for n, e in zip(stopped["name"], stopped["stopped_epoch"], strict=True)]
            stops.update(str(n) for n in stopped["name"])
            counts.append(len(pairs))
            print(f"  seed {seed}: {len(pairs)}: {', '.join(pairs) or 'none'}")
            curves = load_table(run_id, "tllm_curves", args.tracking_uri)
            epochs = [int(e) for e in curves["epoch"]]
            end = args.end or epochs[-1]
            window = [i for i, e in enumerate(epochs) if end - args.window <= e <= end]
            classes = [c for c in curves if c != "epoch"]
            for c in classes:
                drops.setdefault(c, []).append(relative_drop([curves[c][i] for i in window]))
            if name == args.run[0]:
                for c in classes:
                    scaled = [v / curves[c][0] for v in curves[c]]
                    if int(c) in args.classes:
                        drawn.setdefault(int(c), []).append(scaled)
                    else:
                        others.append(scaled)
        mean_count = statistics.fmean(counts)
        sd_count = statistics.stdev(counts) if len(counts) > 1 else math.nan
        print(f"  classes stopped per seed: {mean_count:.1f} ± {sd_count:.1f}")
        print(f"  seeds that stopped each class: {dict(stops.most_common()) or 'none'}")
        end = args.end or epochs[-1]
        print(f"  relative drop of each class's curve over epochs {end - args.window}..{end}, mean ± sd over seeds:")
        for c, values in drops.items():
            kept = [v for v in values if math.isfinite(v)]
            sd = statistics.stdev(kept) if len(kept) > 1 else math.nan
            print(f"    class {c}: {statistics.fmean(kept):+.3f} ± {sd:.3f}" if kept else f"    class {c}: -")
    if args.figure and drawn:
        from kdhub.contract.figures import new_figure

        fig, (ax,) = new_figure(6.5, 3.8)
        median = [statistics.median(col) for col in zip(*others, strict=True)] if others else []
        if median:
            ax.plot(epochs, median, color="0.5", linestyle="--", linewidth=1.5, label="other classes (median)")
        for c, rows in sorted(drawn.items()):
            mean = [statistics.fmean(col) for col in zip(*rows, strict=True)]
            (line,) = ax.plot(epochs, mean, linewidth=2, label=f"class {c} (mean of {len(rows)} seeds)")
            for row in rows:
                ax.plot(epochs, row, color=line.get_color(), linewidth=0.5, alpha=0.4)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")  # the late epochs, where stagnation would show, span a decade below the start
        ax.set_ylabel("validation KD loss / its epoch-1 value (log)")
        ax.set_title(f"teaching curves ({args.run[0]})")
        ax.legend(fontsize="small")
        fig.savefig(args.figure, dpi=80, bbox_inches="tight")
        print(f"figure {args.figure}")


if __name__ == "__main__":
    main()
