"""The policy contract: when, how much and which classes are taught."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from kdhub.contract.base import Plugin
from kdhub.contract.outputs import StepOutputs
from kdhub.contract.runlog import RunLog

__all__ = ["EpochAction", "EpochReport", "Policy", "PolicyContext", "StepPlan"]


@dataclass
class StepPlan:
    """A policy's decision for one step.

    ``ce_weight`` is the weight of the cross-entropy term (None, the default: the run's
    ``ce_weight``); ``kd_weight`` multiplies every method's weight; ``class_mask`` (bool ``[C]`` on
    the training device, None = all) selects the taught classes; ``teacher_scale`` multiplies the
    teacher's logits before the methods see them. A bare ``StepPlan()`` trains as the run says.
    """

    ce_weight: float | None = None
    kd_weight: float = 1.0
    class_mask: Tensor | None = None
    teacher_scale: float | None = None


@dataclass
class EpochAction:
    """What a policy may ask of the engine at an epoch boundary."""

    restore_best: bool = False
    reset_optimizer: bool = False


@dataclass(kw_only=True)
class PolicyContext:
    """What a policy knows about the run, once, before training."""

    epochs: int
    steps_per_epoch: int
    num_classes: int
    ce_weight: float
    device: torch.device
    has_validation: bool
    class_names: list[str] = field(default_factory=list)
    validation_class_counts: Tensor | None = None
    method_names: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class EpochReport:
    """What the engine tells a policy after each epoch (epochs count from 1).

    ``class_losses`` is the per-class mean distillation loss on the validation split (``[C]``,
    NaN for a class with no sample there), computed only for policies with ``wants_class_losses``.
    """

    epoch: int
    log: RunLog
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    class_losses: Tensor | None = None


class Policy(Plugin):
    """Base of every policy. ``plan`` is called every step and must not synchronise with the device.

    Capabilities (class defaults; a property where an option decides): ``needs_validation`` (a
    validation split is required), ``wants_class_losses`` (per-class validation losses in each
    :class:`EpochReport`) and ``needs_methods`` (the run must have a distillation method).
    """

    kind: ClassVar[str] = "policy"
    CAPABILITIES: ClassVar[tuple[str, ...]] = ("needs_validation", "wants_class_losses", "needs_methods")
    wants_class_losses: bool = False
    needs_validation: bool = False
    needs_methods: bool = False

    def setup(self, ctx: PolicyContext) -> None:
        """Resolve options against the run (epoch counts, classes) before training."""
        self.ctx = ctx

    def describe(self, epochs: int, num_classes: int) -> dict[str, Any]:
        """The values this policy resolves from its options for a run of ``epochs`` and ``num_classes``
        (epochs from fractions, caps, ...), as MLflow-ready params; shown by ``kdhub run --dry-run``.

        Pure: it needs no :meth:`setup` and changes nothing. The policy logs the same values as params.
        """
        return {}

    @abstractmethod
    def plan(self, epoch: int, step: int) -> StepPlan:
        """Loss weights and taught classes for ``step`` (global, from 0) of ``epoch`` (from 1).

        Called every training step: return cached tensors, never wait for the device.
        """

    def replacement_loss(self, out: StepOutputs) -> Tensor | None:
        """Per-sample loss ``[B]`` that replaces output-based methods for untaught samples (None = drop)."""
        return None

    def sample_losses(self, out: StepOutputs, method_losses: Tensor | None) -> Tensor | None:
        """Per-sample distillation loss used for ``class_losses`` on the validation split.

        ``method_losses`` is the weighted sum of the run's per-sample method losses (None when the
        run has only batch-relational methods).
        """
        return method_losses

    def epoch_ended(self, report: EpochReport) -> EpochAction:
        """Decide at the end of an epoch (after test and validation): update state, log, and ask for
        a restore of the best checkpoint or a reset of the optimizer and schedule if needed."""
        return EpochAction()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (resume gives the same decisions)."""
