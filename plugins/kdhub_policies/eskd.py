"""Early-stopped knowledge distillation: distil first, then train on the labels only."""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import Field

import kdhub


class ESKD(kdhub.Policy):
    """Stop distilling at a chosen epoch and finish on cross-entropy alone (Cho & Hariharan, 2019).

    Paper: J. H. Cho, B. Hariharan, "On the Efficacy of Knowledge Distillation", ICCV 2019,
    section 5.3 ("Early-stopped knowledge distillation") and 5.5 ("Early-stopped teachers make
    better teachers").

    Student side (this policy): with ``E* = stop_at`` resolved to an epoch (a fraction is rounded
    to the nearest epoch), epochs ``e < E*`` (counted from 1) use the run's weights
    (``w_ce = ce_weight``, ``w_kd = kd_weight``), and every epoch ``e >= E*`` uses
    ``w_kd = 0, w_ce = ce_weight_after``. So ``stop_at: 180`` distils in epochs 1-179 and
    ``stop_at: 0`` (or 1) never distils. The default 0.75 follows the paper's ImageNet runs; the
    TLLM appendix searches 70/80/90/95% and reports ESKD 66.4% vs TLLM 69.5% (resnet50 ->
    MobileNetV2, CIFAR-100).

    Teacher side (early-stopped teachers) is a workflow, not a policy: train the teacher with a
    compressed schedule (n epochs, lr x0.2 every floor((n - 5) / 3) epochs on CIFAR-10) and keep a
    checkpoint per epoch (``checkpoint: {every: 1}``), then point the student run at the one you
    want (``teacher.weights: runs:/<run_id>/checkpoints/epoch_035.pt``). See ``examples/eskd/``
    and ``docs/policies.md``. Logged: ``eskd/kd_active`` per epoch and ``eskd/stop_epoch``::

        ce_weight: 0.1
        methods: [{name: kd, weight: 0.9, options: {temperature: 4}}]
        policy: {name: eskd, options: {stop_at: 0.75, ce_weight_after: 1.0}}
    """

    name = "eskd"

    class Options(kdhub.Options):
        stop_at: kdhub.EpochOrFraction = Field(
            0.75, description="first epoch (from 1) without distillation, or a fraction of the run"
        )
        ce_weight_after: kdhub.FiniteFloat = Field(
            1.0, ge=0, le=1e6, description="cross-entropy weight once distillation stopped"
        )
        kd_weight: kdhub.FiniteFloat = Field(
            1.0, ge=0, le=1e6, description="factor on every method's weight before the stop"
        )

    options: Options

    def __init__(self, options: kdhub.Options | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self._logged = False

    def describe(self, epochs: int, num_classes: int) -> dict[str, Any]:
        return {"eskd/stop_epoch": kdhub.resolve_epoch(self.options.stop_at, epochs)}

    def setup(self, ctx: kdhub.PolicyContext) -> None:
        super().setup(ctx)
        self.stop_epoch = kdhub.resolve_epoch(self.options.stop_at, ctx.epochs)
        self._before = kdhub.StepPlan(kd_weight=self.options.kd_weight)
        self._after = kdhub.StepPlan(ce_weight=self.options.ce_weight_after, kd_weight=0.0)
        if self.stop_epoch > ctx.epochs:
            warnings.warn(
                f"eskd: stop_at resolves to epoch {self.stop_epoch}, after the last epoch ({ctx.epochs}); "
                "distillation is never stopped",
                stacklevel=2,
            )

    def distilling(self, epoch: int) -> bool:
        """Whether ``epoch`` (from 1) is trained with distillation."""
        return epoch < self.stop_epoch

    def plan(self, epoch: int, step: int) -> kdhub.StepPlan:
        return self._before if epoch < self.stop_epoch else self._after

    def epoch_ended(self, report: kdhub.EpochReport) -> kdhub.EpochAction:
        log = report.log
        if not self._logged:
            self._logged = True
            log.params({"eskd/stop_epoch": self.stop_epoch})
        log.metrics({"eskd/kd_active": float(self.distilling(report.epoch))}, step=report.epoch)
        if report.epoch + 1 == self.stop_epoch:
            log.text("eskd_stop.txt", f"eskd: distillation stops after epoch {report.epoch}")
        return kdhub.EpochAction()

    def state_dict(self) -> dict[str, Any]:
        return {"stop_epoch": self.stop_epoch, "logged": self._logged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("stop_epoch")
        if saved is not None and saved != getattr(self, "stop_epoch", saved):
            warnings.warn(
                f"eskd: the checkpoint stopped distillation at epoch {saved}, the config now says "
                f"{self.stop_epoch}; using the config",
                stacklevel=2,
            )
        self._logged = bool(state.get("logged", False))
