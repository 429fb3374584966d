"""The constant policy: fixed loss weights, every class taught."""

from __future__ import annotations

from pydantic import Field

import kdhub


class Constant(kdhub.Policy):
    """Fixed weights for the whole run and every class taught (the default policy).

    ``w_ce`` is the run's ``ce_weight``; ``w_kd`` multiplies every method's weight::

        policy: {name: constant, options: {kd_weight: 1.0}}
    """

    name = "constant"

    class Options(kdhub.Options):
        kd_weight: kdhub.FiniteFloat = Field(1.0, ge=0, le=1e6, description="factor on every method's weight")

    options: Options

    def setup(self, ctx: kdhub.PolicyContext) -> None:
        super().setup(ctx)
        self._plan = kdhub.StepPlan(kd_weight=self.options.kd_weight)

    def plan(self, epoch: int, step: int) -> kdhub.StepPlan:
        return self._plan
