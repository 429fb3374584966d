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

    def last(self, key: str) -> float:
        return self.metric_history[key][-1][1]
