"""The metric contract: accumulate over evaluation batches, then report."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdhub.contract.base import Plugin
from kdhub.contract.outputs import EvalBatch
from kdhub.contract.runlog import Table
from kdhub.contract.tables import TableSchema

__all__ = ["EvalBatch", "Metric", "MetricContext", "MetricResult"]


@dataclass(kw_only=True)
class MetricContext:
    """What a metric knows about the evaluation it is about to see.

    ``student_shapes`` / ``teacher_shapes`` are the per-sample feature shapes by role (from the dry
    run), so accumulators can be sized before the first batch (a process may see no batch).
    ``num_samples`` is the split's size and ``batch_size`` the evaluation batch size (0 = unknown).
    """

    num_classes: int
    split: str
    epoch: int
    device: torch.device
    class_names: list[str]
    student: nn.Module
    teacher: nn.Module | None = None
    num_samples: int = 0
    batch_size: int = 0
    seed: int = 0
    student_shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    teacher_shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)

    @property
    def has_teacher(self) -> bool:
        return self.teacher is not None


@dataclass
class MetricResult:
    """Scalars (logged as ``<split>/<name>/<key>``), tables (artifacts) and matplotlib figures."""

    scalars: dict[str, float] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


class Metric(Plugin):
    """Base of every metric.

    Lifecycle per evaluation: ``reset(ctx)``, ``update(batch)`` for each batch, then the engine
    sums ``accumulators()`` across processes (in place) and calls ``compute()``. Keep
    accumulators as tensors (counts, sums, confusion matrices) so that summing is correct.
    ``start(ctx)`` is called once before training (e.g. to remember initial weights).
    ``kdhub.testing.check_metric`` checks a metric against the engine's own evaluation.

    Capabilities (class defaults; a property where an option decides): ``needs_teacher`` and
    ``feature_roles`` (roles needed from both models in evaluation). ``tables`` names the
    shared tables (:mod:`kdhub.contract.tables`) the metric logs; ``columns`` the scalars shown in the
    run list's "Accuracy" view.
    """

    kind: ClassVar[str] = "metric"
    CAPABILITIES: ClassVar[tuple[str, ...]] = ("needs_teacher", "feature_roles", "tables")
    tables: ClassVar[tuple[TableSchema, ...]] = ()
    columns: ClassVar[tuple[str, ...]] = ()
    """Scalars of :meth:`compute` worth a column of the run list: the MLflow UI's "Accuracy" view shows them
    (as ``<split>/<metric>/<scalar>``) beside the test accuracies, e.g. ``("pa",)`` for agreement."""
    needs_teacher: bool = False
    feature_roles: tuple[str, ...] = ()

    def start(self, ctx: MetricContext) -> None:
        """Called once before training begins."""

    def reset(self, ctx: MetricContext) -> None:
        """Start a new evaluation: size the accumulators (zeros) from ``ctx`` before any batch."""
        self.ctx = ctx

    @abstractmethod
    def update(self, batch: EvalBatch) -> None:
        """Add one batch to the accumulators, on the device and without waiting for it (no ``.item()``)."""

    def accumulators(self) -> dict[str, Tensor]:
        """The tensors the engine sums across processes before :meth:`compute` (in place)."""
        return {}

    @abstractmethod
    def compute(self) -> MetricResult:
        """The result from the (summed) accumulators; a process that saw no batch still has them."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
