"""Seeds of each grid point summarised: mean ± standard deviation and n of the accuracies.

For every run name and grid point, over its finished seeds: ``test/acc_max_seen`` (the best test
accuracy over the epochs: optimistic, the epoch is chosen on the test split), ``test/acc_last``
(after the last epoch) and ``test/acc_at_best_val`` (test accuracy at the epoch of best validation
accuracy, runs with a validation split only). The standard deviation is the sample one (n − 1 in
the denominator), NaN for a single seed; n counts the seeds with a finite value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["ACCURACIES", "aggregate", "aggregate_figure", "aggregate_metrics", "mean_std"]

ACCURACIES = {
    "best": "test/acc_max_seen",
    "last": "test/acc_last",
    "at_best_val": "test/acc_at_best_val",
}


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN for n < 2) and n of the finite values."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(kept)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(kept) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1)) if n > 1 else math.nan
    return mean, std, n


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """One row per grid point (``point``) over the finished rows' ``metrics``."""
    points: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["state"] == "finished":
            points.setdefault(row["point"], []).append(row)
    table: dict[str, list[Any]] = {"point": [], "seeds": []}
    for short in ACCURACIES:
        table.update({f"{short}_mean": [], f"{short}_std": [], f"{short}_n": []})
    for point, members in points.items():
        table["point"].append(point)
        table["seeds"].append(",".join(str(r["seed"]) for r in members))
        for short, key in ACCURACIES.items():
            mean, std, n = mean_std([r["metrics"].get(key, math.nan) for r in members])
            table[f"{short}_mean"].append(mean)
            table[f"{short}_std"].append(std)
            table[f"{short}_n"].append(n)
    return table


def aggregate_metrics(table: dict[str, list[Any]]) -> dict[str, float]:
    """The aggregate as metrics of the study's parent run (sortable, chartable in the MLflow UI):
    ``<point>/<accuracy>_mean`` and ``_std``, e.g. ``kd[temperature=4]/test/acc_last_mean`` (the key is
    made MLflow-safe by the tracker: ``kd temperature 4/test/acc_last_mean``); non-finite values are
    left out (the std of a single seed)."""
    metrics: dict[str, float] = {}
    for i, point in enumerate(table["point"]):
        for short, key in ACCURACIES.items():
            for stat in ("mean", "std"):
                value = table[f"{short}_{stat}"][i]
                if math.isfinite(value):
                    metrics[f"{point}/{key}_{stat}"] = value
    return metrics


def aggregate_figure(table: dict[str, list[Any]], title: str) -> Any:
    """Grouped bars of the mean accuracies per grid point with ±1 standard deviation error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = table["point"]
    shown = [s for s in ACCURACIES if any(n > 0 for n in table[f"{s}_n"])]
    fig = Figure(figsize=(max(5.0, 1.2 * len(points) * max(1, len(shown)) / 2 + 2), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / max(1, len(shown))
    for i, short in enumerate(shown):
        xs = [p + (i - (len(shown) - 1) / 2) * width for p in range(len(points))]
        means = table[f"{short}_mean"]
        errors = [s if math.isfinite(s) else 0.0 for s in table[f"{short}_std"]]
        ax.bar(xs, means, width, yerr=errors, capsize=3, label=f"{ACCURACIES[short]}")
    bottoms = [
        m - (d if math.isfinite(d) else 0.0)
        for short in shown
        for m, d in zip(table[f"{short}_mean"], table[f"{short}_std"], strict=True)
        if math.isfinite(m)
    ]
    low = min(bottoms, default=0.0)
    ax.set_ylim(max(0.0, low - 5), None)
    ax.set_xticks(range(len(points)), [f"{p}\nn={n}" for p, n in zip(points, _n(table), strict=True)], fontsize=8)
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(title, fontsize=10)
    fig.legend(fontsize=8, loc="outside right upper")
    return fig


def _n(table: dict[str, list[Any]]) -> list[int]:
    return [max(table[f"{s}_n"][i] for s in ACCURACIES) for i in range(len(table["point"]))]
