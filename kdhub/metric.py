"""The metric contract: accumulate over evaluation batches, then report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdhub.base import Plugin
from kdhub.runlog import Table
from kdhub.tables import TableSchema

__all__ = ["EvalBatch", "Metric", "MetricContext", "MetricResult"]


@dataclass
class EvalBatch:
    """One evaluation batch: both models in eval mode, no augmentation, no gradients."""

    student_logits: Tensor
    teacher_logits: Tensor | None
    labels: Tensor
    indices: Tensor
    student_features: dict[str, list[Tensor]] = field(default_factory=dict)
    teacher_features: dict[str, list[Tensor]] = field(default_factory=dict)


@dataclass
class MetricContext:
    """What a metric knows about the evaluation it is about to see.

    ``student_shapes`` / ``teacher_shapes`` are the per-sample feature shapes by role (from the dry
    run), so accumulators can be sized before the first batch (a process may see no batch).
    """

    num_classes: int
    split: str
    epoch: int
    device: torch.device
    class_names: list[str]
    student: nn.Module
    teacher: nn.Module | None = None
    num_samples: int = 0
    seed: int = 0
    student_shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    teacher_shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_teacher(self) -> bool:
        return self.teacher is not None


@dataclass
class MetricResult:
    """Scalars (logged as ``<split>/<name>``), tables (artifacts) and matplotlib figures."""

    scalars: dict[str, float] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


class Metric(Plugin):
    """Base of every metric.

    Lifecycle per evaluation: ``reset(ctx)``, ``update(batch)`` for each batch, then the engine
    sums ``accumulators()`` across processes (in place) and calls ``compute()``. Keep
    accumulators as tensors (counts, sums, confusion matrices) so that summing is correct.
    ``start(ctx)`` is called once before training (e.g. to remember initial weights).
    """

    kind: ClassVar[str] = "metric"
    needs_teacher: ClassVar[bool] = False
    tables: ClassVar[tuple[TableSchema, ...]] = ()
    """Shared tables (:mod:`kdhub.tables`) this metric logs, for the readers that look them up."""

    def feature_roles(self) -> tuple[str, ...]:
        """Feature roles this metric needs from both models in evaluation."""
        return ()

    def start(self, ctx: MetricContext) -> None:
        """Called once before training begins."""

    def reset(self, ctx: MetricContext) -> None:
        self.ctx = ctx

    def update(self, batch: EvalBatch) -> None:
        raise NotImplementedError

    def accumulators(self) -> dict[str, Tensor]:
        return {}

    def compute(self) -> MetricResult:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
