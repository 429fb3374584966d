"""The method contract: what a distillation method receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdhub.base import Options, Plugin

__all__ = ["LossValue", "Method", "SetupContext", "StepOutputs"]

LossValue = Tensor | dict[str, Tensor]
"""A loss, or a dict of named loss terms that are summed (each is logged on its own)."""


@dataclass
class StepOutputs:
    """Everything the engine hands to a method for one batch.

    Features are keyed by *role* ("stages", "preact_stages", "pooled", ...), each a list of
    tensors in network order, taken by forward hooks on the modules the model plugin names.
    """

    student_logits: Tensor
    teacher_logits: Tensor | None
    labels: Tensor
    indices: Tensor
    epoch: int = 1
    step: int = 0
    class_mask: Tensor | None = None
    student_features: dict[str, list[Tensor]] = field(default_factory=dict)
    teacher_features: dict[str, list[Tensor]] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]

    def taught(self) -> Tensor | None:
        """Per-sample bool mask: sample i is taught iff ``class_mask[labels[i]]`` (None = all)."""
        if self.class_mask is None:
            return None
        return self.class_mask[self.labels]

    def select(self, keep: Tensor) -> StepOutputs:
        """The same outputs restricted to the samples in ``keep`` (bool mask or index tensor)."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[keep]

        return replace(
            self,
            student_logits=self.student_logits[keep],
            teacher_logits=pick(self.teacher_logits),
            labels=self.labels[keep],
            indices=self.indices[keep],
            student_features={k: [t[keep] for t in v] for k, v in self.student_features.items()},
            teacher_features={k: [t[keep] for t in v] for k, v in self.teacher_features.items()},
        )


@dataclass
class SetupContext:
    """What a method (or metric) may look at once, before training, to size its trainable parts.

    Shapes are per sample (no batch dimension), found by a dry-run forward of both models.
    """

    num_classes: int
    num_train: int
    epochs: int
    steps_per_epoch: int
    student: nn.Module
    teacher: nn.Module | None
    student_taps: dict[str, list[str]]
    teacher_taps: dict[str, list[str]]
    student_shapes: dict[str, list[tuple[int, ...]]]
    teacher_shapes: dict[str, list[tuple[int, ...]]]
    train_labels: Tensor
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    extra: dict[str, Any] = field(default_factory=dict)


class Method(nn.Module, Plugin):
    """Base of every distillation method.

    Class attributes describe the method to the engine:

    - ``per_sample``: ``loss`` returns a per-sample loss ``[B]`` (reduced by the engine as
      ``sum_i mask[y_i] * l_i / B``); ``False`` for batch-relational losses, which return a scalar
      and are computed on the taught samples only (0 when fewer than 2 remain).
    - ``output_based``: the loss compares outputs (logits); a class-selection policy may *replace*
      it by its own per-sample loss for stopped classes, while feature losses are dropped.
    - ``feature_roles``: feature roles needed from both models (e.g. ``("stages",)``).
    - ``needs_teacher``: ``False`` for teacher-free regularisers (label smoothing).
    - ``default_weight``: the weight used when the config gives none (the reference recipe).
    - ``init_epochs``: epochs of an initialisation stage trained with :meth:`init_loss` only.

    A method is an ``nn.Module``: its parameters are trained with the student and its state
    (regressors, memory banks) is part of every checkpoint.
    """

    kind: ClassVar[str] = "method"
    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options
    per_sample: ClassVar[bool] = True
    output_based: ClassVar[bool] = False
    feature_roles: ClassVar[tuple[str, ...]] = ()
    needs_teacher: ClassVar[bool] = True
    default_weight: ClassVar[float] = 1.0
    paper: ClassVar[str] = ""

    def __init__(self, options: Options | None = None, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        Plugin.__init__(self, options, **kwargs)

    @property
    def init_epochs(self) -> int:
        return 0

    def setup(self, ctx: SetupContext) -> None:
        """Build trainable parts from the dry-run shapes; raise IncompatibleError if impossible."""

    def loss(self, out: StepOutputs) -> LossValue:
        raise NotImplementedError

    def init_loss(self, out: StepOutputs) -> Tensor:
        """The scalar loss of the initialisation stage (only when ``init_epochs > 0``)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
