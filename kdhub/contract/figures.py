"""Figures for metrics, policies and comparisons: matplotlib on the Agg canvas, without pyplot.

No global state is touched (no ``matplotlib.use``, no pyplot registry, nothing to close), so
plugins can make figures in any process, notebook or server.
"""

from __future__ import annotations

from typing import Any

__all__ = ["new_figure"]


def new_figure(width: float = 5.0, height: float = 4.0, ncols: int = 1) -> tuple[Any, list[Any]]:
    """A figure of ``ncols`` axes side by side, each ``width`` x ``height`` inches; laid out when drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)
