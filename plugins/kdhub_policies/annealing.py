"""Annealing KD: regress onto gradually sharpened teacher logits, then fine-tune on the labels."""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import Field

import kdhub


def annealing_factor(epoch: int, phase1_epochs: int, tau_max: int) -> float:
    """``Phi(e) = min(tau_max, 1 + floor((e - 1) / P)) / tau_max`` with ``P = max(1, floor(E1 / tau_max))``."""
    period = max(1, phase1_epochs // tau_max)
    return min(tau_max, 1 + (epoch - 1) // period) / tau_max


class Annealing(kdhub.Policy):
    """Regress onto rising fractions of the teacher's logits, then train on labels alone (Jafari et al., 2021).

    Paper: A. Jafari, M. Rezagholizadeh, P. Sharma, A. Ghodsi, "Annealing Knowledge Distillation",
    EACL 2021; official code huawei-noah/Efficient-NLP (AnnealingKD).

    - **Phase 1** (epochs ``1 .. E1``, ``E1 = phase1_epochs``, default 2/3 of the run): ``w_ce = 0``
      (no labels), ``w_kd = 1``, and the teacher's logits are multiplied by
      ``Phi(e) = min(tau_max, 1 + floor((e - 1) / P)) / tau_max`` with ``P = max(1, floor(E1 / tau_max))``,
      so ``Phi`` rises from ``1/tau_max`` to 1 in equal steps (the paper writes
      ``Phi(T) = 1 - (T - 1) / tau_max`` with T counting down). kdhub clamps ``Phi <= 1``: the
      official code lets it pass 1 when E1 is not a multiple of ``tau_max``.
    - **Phase 2** (epochs ``E1 + 1 ..``): ``w_ce = 1``, ``w_kd = 0``. At the end of epoch E1 the
      policy asks the engine to restore the best phase-1 checkpoint (``phase2_from_best``; chosen on
      the validation split, whereas the official code picks it on the test set) and to start a
      fresh optimizer and learning-rate schedule (``reset_optimizer``).

    The paper's loss is the MSE between the student's logits and ``Phi * z_t``: use it with the
    method ``mse_logits`` (``l_i = mean_k (z_s,k - Phi z_t,k)^2``). The run's ``ce_weight`` is
    not used: this policy sets ``w_ce`` itself (0, then 1). Logged: ``annealing/phi`` and
    ``annealing/phase`` per epoch, ``annealing/phase2_start_epoch`` and the text
    ``annealing_boundary.txt``::

        methods: [{name: mse_logits, weight: 1.0}]
        data: {name: cifar100, val_fraction: 0.05}     # the best phase-1 checkpoint is chosen on it
        policy: {name: annealing, options: {phase1_epochs: 0.6667, tau_max: 10}}
    """

    name = "annealing"

    class Options(kdhub.Options):
        phase1_epochs: kdhub.EpochOrFraction = Field(
            2 / 3, description="E1: epochs of phase 1 (int) or a fraction of the run"
        )
        tau_max: int = Field(10, ge=1, le=10000, description="number of steps of Phi, from 1/tau_max up to 1")
        phase2_from_best: bool = Field(True, description="phase 2 starts from the best phase-1 checkpoint")
        reset_optimizer: bool = Field(True, description="phase 2 starts with a fresh optimizer and schedule")

    options: Options

    @property
    def needs_validation(self) -> bool:  # type: ignore[override]  # a capability an option decides
        return self.options.phase2_from_best  # the best phase-1 checkpoint is chosen on the validation split

    def __init__(self, options: kdhub.Options | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.boundary_done = False
        self._logged = False

    def describe(self, epochs: int, num_classes: int) -> dict[str, Any]:
        phase1 = kdhub.resolve_epoch(self.options.phase1_epochs, epochs)
        return {
            "annealing/phase1_epochs": phase1,
            "annealing/phase2_start_epoch": phase1 + 1,
            "annealing/phi_period": max(1, phase1 // self.options.tau_max),
        }

    def setup(self, ctx: kdhub.PolicyContext) -> None:
        super().setup(ctx)
        o = self.options
        self.phase1_epochs = kdhub.resolve_epoch(o.phase1_epochs, ctx.epochs)
        self.period = max(1, self.phase1_epochs // o.tau_max)
        self._phase1 = [
            kdhub.StepPlan(ce_weight=0.0, kd_weight=1.0, teacher_scale=self.phi(e))
            for e in range(1, min(self.phase1_epochs, ctx.epochs) + 1)
        ]
        self._phase2 = kdhub.StepPlan(ce_weight=1.0, kd_weight=0.0)
        if ctx.ce_weight not in (0.0, 1.0):
            warnings.warn(
                f"annealing: ce_weight={ctx.ce_weight} is not used; the policy trains phase 1 without "
                "labels (w_ce = 0) and phase 2 on labels only (w_ce = 1)",
                stacklevel=2,
            )
        if self.phase1_epochs >= ctx.epochs:
            warnings.warn(
                f"annealing: phase 1 lasts {self.phase1_epochs} of {ctx.epochs} epochs; there is no phase 2",
                stacklevel=2,
            )
        elif self.phase1_epochs == 0:
            warnings.warn("annealing: phase1_epochs is 0; the whole run is phase 2 (labels only)", stacklevel=2)

    def phi(self, epoch: int) -> float:
        """The teacher-logit factor of phase-1 ``epoch`` (from 1)."""
        return annealing_factor(epoch, self.phase1_epochs, self.options.tau_max)

    def phase(self, epoch: int) -> int:
        return 1 if epoch <= self.phase1_epochs else 2

    def plan(self, epoch: int, step: int) -> kdhub.StepPlan:
        if epoch <= len(self._phase1):
            return self._phase1[epoch - 1]
        return self._phase2

    def epoch_ended(self, report: kdhub.EpochReport) -> kdhub.EpochAction:
        epoch, log = report.epoch, report.log
        if not self._logged:
            self._logged = True
            log.params(
                {
                    "annealing/phase1_epochs": self.phase1_epochs,
                    "annealing/phase2_start_epoch": self.phase1_epochs + 1,
                    "annealing/phi_period": self.period,
                }
            )
        values = {"annealing/phase": float(self.phase(epoch))}
        if self.phase(epoch) == 1:
            values["annealing/phi"] = self.phi(epoch)
        log.metrics(values, step=epoch)
        if epoch == self.phase1_epochs and epoch < self.ctx.epochs and not self.boundary_done:
            self.boundary_done = True
            action = kdhub.EpochAction(
                restore_best=self.options.phase2_from_best, reset_optimizer=self.options.reset_optimizer
            )
            log.text(
                "annealing_boundary.txt",
                f"annealing: phase 1 ended after epoch {epoch}; phase 2 starts at epoch {epoch + 1} "
                f"(restore_best={action.restore_best}, reset_optimizer={action.reset_optimizer})",
            )
            return action
        return kdhub.EpochAction()

    def state_dict(self) -> dict[str, Any]:
        return {"boundary_done": self.boundary_done, "logged": self._logged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.boundary_done = bool(state.get("boundary_done", False))
        self._logged = bool(state.get("logged", False))
