"""Loss switching: move from distillation to one-hot labels (or back), abruptly or over a window."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

import kdhub


class LossSwitch(kdhub.Policy):
    """Switch the loss between distillation and one-hot labels at a chosen epoch (Nagarajan et al., 2023).

    Paper: V. Nagarajan, A. K. Menon, S. Bhojanapalli, H. Mobahi, S. Kumar, "On student-teacher
    deviations in distillation: does it pay to disobey?", NeurIPS 2023 (section 5.2, appendix E);
    the kd-to-one-hot switch follows Cho & Hariharan (2019) and Jafari et al. (2021).

    Time is the fractional epoch ``x = step / steps_per_epoch`` at the start of each step
    (``step`` global, from 0), so epoch ``e`` (from 1) covers ``e - 1 <= x < e``. With ``A = at``
    resolved to an epoch (a fraction is rounded to the nearest epoch) and ``W = window`` in epochs::

        lambda(x) = clamp((x - (A - 1)) / W, 0, 1)        (W > 0)
        lambda(x) = 1 if x >= A - 1 else 0                (W = 0: abrupt)

    so ``at`` is the first epoch of the switch, as ESKD's ``stop_at`` (``at: 0`` and ``at: 1``
    both switch from the first step); the switch is complete ``W`` epochs later. The paper gives
    its window in steps: ``window = steps / steps_per_epoch`` (fractions allowed). Weights, with
    ``w_ce0`` the run's ``ce_weight`` and ``w_kd0 = kd_weight``:

    - ``kd_to_ce``: ``w_kd = (1 - lambda) w_kd0``, ``w_ce = lambda + (1 - lambda) w_ce0``;
    - ``ce_to_kd`` (the mirror image): ``w_kd = lambda w_kd0``, ``w_ce = (1 - lambda) + lambda w_ce0``.

    ``kd_to_ce`` with ``window: 0`` is ESKD with ``ce_weight_after: 1``. The paper's finding:
    switching to one-hot helps when the teacher does not interpolate its training data
    (Tiny-ImageNet, ImageNet, a half-interpolating CIFAR-100 teacher) and hurts when it does
    (CIFAR-100); switching to distillation late regains most of its gain on CIFAR-100. Check the
    teacher's train accuracy with the ``interpolation`` metric. Logged per epoch (value at the
    epoch's last step): ``loss_switch/lambda``, ``loss_switch/ce_weight``, ``loss_switch/kd_weight``::

        ce_weight: 0.0
        methods: [{name: kd, weight: 1.0, options: {temperature: 4}}]
        policy: {name: loss_switch, options: {direction: kd_to_ce, at: 0.5, window: 0}}
    """

    name = "loss_switch"

    class Options(kdhub.Options):
        direction: Literal["kd_to_ce", "ce_to_kd"] = Field(
            "kd_to_ce", description="kd_to_ce: from the run's mix to one-hot; ce_to_kd: the reverse"
        )
        at: kdhub.EpochOrFraction = Field(
            0.5, description="first epoch (from 1) of the switch, or a fraction of the run"
        )
        window: kdhub.FiniteFloat = Field(
            0.0, ge=0, le=100000, description="length of the gradual switch in epochs (float allowed; 0 = abrupt)"
        )
        kd_weight: kdhub.FiniteFloat = Field(
            1.0, ge=0, le=1e6, description="w_kd0: factor on every method's weight on the KD side"
        )

    options: Options

    def __init__(self, options: kdhub.Options | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self._logged = False

    def describe(self, epochs: int, num_classes: int) -> dict[str, Any]:
        return {"loss_switch/at_epoch": max(1, kdhub.resolve_epoch(self.options.at, epochs))}

    def setup(self, ctx: kdhub.PolicyContext) -> None:
        super().setup(ctx)
        self.at_epoch = max(1, kdhub.resolve_epoch(self.options.at, ctx.epochs))
        self.start_step = (self.at_epoch - 1) * ctx.steps_per_epoch
        self.window_steps = self.options.window * ctx.steps_per_epoch
        self._first = self._make(0.0)
        self._last = self._make(1.0)

    def lam(self, step: int) -> float:
        """The switch progress lambda at global ``step`` (from 0)."""
        progressed = step - self.start_step
        if progressed < 0:
            return 0.0
        if progressed >= self.window_steps:
            return 1.0
        return progressed / self.window_steps

    def weights(self, lam: float) -> tuple[float, float]:
        """``(w_ce, w_kd)`` at switch progress ``lam``."""
        w_ce0, w_kd0 = self.ctx.ce_weight, self.options.kd_weight
        if self.options.direction == "ce_to_kd":
            lam = 1.0 - lam
        return lam + (1.0 - lam) * w_ce0, (1.0 - lam) * w_kd0

    def _make(self, lam: float) -> kdhub.StepPlan:
        ce, kd = self.weights(lam)
        return kdhub.StepPlan(ce_weight=ce, kd_weight=kd)

    def plan(self, epoch: int, step: int) -> kdhub.StepPlan:
        lam = self.lam(step)
        if lam <= 0.0:
            return self._first
        if lam >= 1.0:
            return self._last
        return self._make(lam)

    def epoch_ended(self, report: kdhub.EpochReport) -> kdhub.EpochAction:
        log = report.log
        if not self._logged:
            self._logged = True
            log.params(
                {
                    "loss_switch/at_epoch": self.at_epoch,
                    "loss_switch/start_step": self.start_step,
                    "loss_switch/end_step": self.start_step + self.window_steps,
                }
            )
        lam = self.lam(report.epoch * self.ctx.steps_per_epoch - 1)
        ce, kd = self.weights(lam)
        log.metrics(
            {"loss_switch/lambda": lam, "loss_switch/ce_weight": ce, "loss_switch/kd_weight": kd}, step=report.epoch
        )
        return kdhub.EpochAction()

    def state_dict(self) -> dict[str, Any]:
        return {"logged": self._logged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._logged = bool(state.get("logged", False))
