"""What plugins log through: numbers, tables and figures, without importing mlflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["MemoryLog", "RunLog", "Table"]

Table = dict[str, list[Any]]
"""A table as columns: ``{"class": [...], "accuracy": [...]}`` (all columns the same length)."""


@runtime_checkable
class RunLog(Protocol):
    """The logging surface the engine hands to policies and metrics (MLflow in real runs)."""

    def metrics(self, values: dict[str, float], step: int | None = None) -> None: ...

    def params(self, values: dict[str, Any]) -> None: ...

    def table(self, name: str, data: Table) -> None: ...

    def figure(self, name: str, figure: Any) -> None: ...

    def text(self, name: str, text: str) -> None: ...


@dataclass
class MemoryLog:
    """A RunLog that keeps everything in memory: for tests and for dry runs."""

    metric_history: dict[str, list[tuple[int | None, float]]] = field(default_factory=dict)
    param_values: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        for key, value in values.items():
            self.metric_history.setdefault(key, []).append((step, float(value)))

    def params(self, values: dict[str, Any]) -> None:
        self.param_values.update(values)

    def table(self, name: str, data: Table) -> None:
        self.tables[name] = {k: list(v) for k, v in data.items()}

    def figure(self, name: str, figure: Any) -> None:
        self.figures[name] = figure

    def text(self, name: str, text: str) -> None:
        self.texts[name] = text


class EpochLog:
    """A RunLog that holds metric values back until :meth:`flush` (tables, figures, params go straight through).

    The engine hands it to plugins during an epoch and flushes it after the epoch's checkpoint
    is written, so an epoch's metrics, its checkpoint and its files are one unit: a run killed
    in between resumes without logging a step twice or losing one. Values logged without a step
    take the epoch's (:meth:`at_step`).
    """

    def __init__(self, target: RunLog) -> None:
        self.target = target
        self.step: int | None = None
        self.pending: dict[int | None, dict[str, float]] = {}

    def at_step(self, step: int | None) -> None:
        self.step = step

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        self.pending.setdefault(self.step if step is None else step, {}).update(values)

    def params(self, values: dict[str, Any]) -> None:
        self.target.params(values)

    def table(self, name: str, data: Table) -> None:
        self.target.table(name, data)

    def figure(self, name: str, figure: Any) -> None:
        self.target.figure(name, figure)

    def text(self, name: str, text: str) -> None:
        self.target.text(name, text)

    def flush(self, skip: dict[str, int] | None = None) -> None:
        """Log what is pending, one batch per step; ``skip`` maps a key to the last step already logged."""
        for step, values in sorted(self.pending.items(), key=lambda item: -1 if item[0] is None else item[0]):
            if skip:
                values = {k: v for k, v in values.items() if step is None or step > skip.get(k, -1)}
            if values:
                self.target.metrics(values, step=step)
        self.pending.clear()
