"""The method contract: what a distillation method receives and returns."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdhub.contract.base import Options, Plugin
from kdhub.contract.outputs import StepOutputs

__all__ = ["LossValue", "Method", "SetupContext", "StepOutputs"]

LossValue = Tensor | dict[str, Tensor]
"""A loss, or a dict of named loss terms that are summed (each is logged on its own)."""


@dataclass(kw_only=True)
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


class Method(nn.Module, Plugin):
    """Base of every distillation method.

    Facts (class attributes, no option changes them):

    - ``per_sample``: ``loss`` returns a per-sample loss ``[B]`` (reduced by the engine as
      ``sum_i mask[y_i] * l_i / B``); ``False`` for batch-relational losses, which return a scalar
      and are computed on the taught samples only (0 when fewer than 2 remain).
    - ``output_based``: the loss compares outputs (logits); a class-selection policy may *replace*
      it by its own per-sample loss for stopped classes, while feature losses are dropped.
    - ``default_weight``: the weight used when the config gives none (the reference recipe).

    Capabilities an option may change (a class default; override with a property when an option
    decides): ``feature_roles`` (roles needed from both models, e.g. ``("stages",)``),
    ``needs_teacher`` (``False`` for teacher-free regularisers) and ``init_epochs`` (epochs of an
    initialisation stage trained with :meth:`init_loss` only). Config validation reads them from
    an instance made with the run's options, before any model is built.

    A method is an ``nn.Module``: its parameters are trained with the student and its state
    (regressors, memory banks) is part of every checkpoint.
    """

    kind: ClassVar[str] = "method"
    CAPABILITIES: ClassVar[tuple[str, ...]] = (
        "per_sample",
        "output_based",
        "feature_roles",
        "needs_teacher",
        "default_weight",
        "init_epochs",
    )
    per_sample: ClassVar[bool] = True
    output_based: ClassVar[bool] = False
    default_weight: ClassVar[float] = 1.0
    paper: ClassVar[str] = ""
    feature_roles: tuple[str, ...] = ()
    needs_teacher: bool = True
    init_epochs: int = 0

    def __init__(self, options: Options | None = None, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        Plugin.__init__(self, options, **kwargs)

    def setup(self, ctx: SetupContext) -> None:
        """Build trainable parts from the dry-run shapes; raise IncompatibleError if impossible."""

    @abstractmethod
    def loss(self, out: StepOutputs) -> LossValue:
        """The distillation loss of one batch: ``[B]`` per sample when ``per_sample``, else a scalar.

        Return a dict of named terms to log them separately (``{"tckd": ..., "nckd": ...}``); the
        engine applies the policy's class mask, the method's weight and the reduction.
        """

    def init_loss(self, out: StepOutputs) -> Tensor:
        """The scalar loss of the initialisation stage (only called when ``init_epochs > 0``)."""
        raise NotImplementedError(f"method {self.name!r} declares init_epochs but no init_loss")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
