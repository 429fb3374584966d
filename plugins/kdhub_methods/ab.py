"""Activation boundaries (Heo et al., AAAI 2019)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

import kdhub
from kdhub_methods._feature_common import ConvReg, Stages, require_maps, resolve_stages, role_shapes, taught_weight

SCALE = 3.0 / 1000.0  # RepDistiller's (and the authors' code's) fixed factor on the summed loss


def alternative_l2(source: Tensor, target: Tensor, margin: float) -> Tensor:
    """Per-sample sum of the hinge-squared activation-boundary loss over ``(C, H, W)``: ``[B]``.

    ``(s + m)^2`` where the teacher neuron is off (``t <= 0``) but ``s > -m``, and ``(s - m)^2``
    where it is on (``t > 0``) but ``s <= m``.
    """
    source = source.float()
    off = (target <= 0) & (source > -margin)
    on = (target > 0) & (source <= margin)
    loss = (source + margin).square() * off + (source - margin).square() * on
    return loss.flatten(1).sum(dim=1)


class _Identity(nn.Module):
    def forward(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        return x


class AB(kdhub.Method):
    """Activation boundaries: teach the student which neurons the teacher switches on (initialisation method).

    Paper: B. Heo, M. Lee, S. Yun, J. Y. Choi, "Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons", AAAI 2019.

    On the pre-ReLU stage outputs (role ``preact_stages``), a connector ``r`` (1x1 conv + BN when
    the student stage differs from the teacher's in channels or size -- RepDistiller's ``ConvReg``
    without ReLU -- identity otherwise) maps the student map to the teacher's. Per sample:
    ``l_i = 3/1000 * sum_k 2^(k-n+1) * sum_{c,h,w} [(r(s)+m)^2 1(t<=0, r(s)>-m) + (r(s)-m)^2 1(t>0, r(s)<=m)]``
    over the ``n`` chosen stages (the last has weight 1, each earlier one half the next), margin
    ``m = 1``. The batch mean is RepDistiller's ``ABLoss`` summed over stages.

    Two stages, as in the paper and RepDistiller: for ``init_epochs`` epochs the engine trains
    :meth:`init_loss` alone (student and connectors; RepDistiller: 30 epochs, unweighted loss), then
    the main stage trains the student with the task loss only -- ``loss`` is 0 unless
    ``main_loss: true``, which also adds the AB loss (times the method weight) to the main stage.
    So with the defaults the method weight (RepDistiller's ``-b 1``) has no effect.

    Reference recipe (CIFAR-100, RepDistiller): CE weight 1, AB weight 1, 30 init epochs::

        ce_weight: 1.0
        methods:
          - name: ab
            weight: 1
            options: {init_epochs: 30, margin: 1.0}
    """

    name = "ab"
    feature_roles = ("preact_stages",)
    default_weight: ClassVar[float] = 1.0
    paper: ClassVar[str] = "Heo et al. 2019"

    class Options(kdhub.Options):
        init_epochs: int = Field(
            30, ge=0, le=10_000, description="epochs of the initialisation stage trained with the AB loss"
        )
        margin: kdhub.FiniteFloat = Field(1.0, gt=0, le=1e4, description="margin m of the activation-boundary loss")
        stages: Stages | None = Field(
            None,
            max_length=64,
            description="indices into 'preact_stages' of both models (negative from the end); None = all",
        )
        main_loss: bool = Field(
            False, description="also add the AB loss in the main stage (the paper and RepDistiller do not)"
        )

    options: Options

    @property
    def init_epochs(self) -> int:  # type: ignore[override]  # a capability an option decides
        return self.options.init_epochs

    def setup(self, ctx: kdhub.SetupContext) -> None:
        s_shapes, t_shapes = role_shapes(ctx, "preact_stages", self.name)
        self._stages = resolve_stages(len(s_shapes), len(t_shapes), self.options.stages, self.name, "preact_stages")
        connectors: list[nn.Module] = []
        for i in self._stages:
            require_maps(s_shapes[i], self.name, "preact_stages", "student")
            require_maps(t_shapes[i], self.name, "preact_stages", "teacher")
            same = s_shapes[i] == t_shapes[i]
            connectors.append(_Identity() if same else ConvReg(s_shapes[i], t_shapes[i], relu=False, who=self.name))
        self.connectors = nn.ModuleList(connectors).to(ctx.device)
        n = len(self._stages)
        self._stage_weights = [SCALE * 2.0 ** (k - n + 1) for k in range(n)]

    def _per_sample(self, out: kdhub.StepOutputs, weight: Tensor | None) -> Tensor:
        g_s, g_t = out.student_features["preact_stages"], out.teacher_features["preact_stages"]
        losses = []
        for i, connector, w in zip(self._stages, self.connectors, self._stage_weights, strict=True):
            losses.append(w * alternative_l2(connector(g_s[i], weight), g_t[i], self.options.margin))
        return torch.stack(losses).sum(dim=0)

    def loss(self, out: kdhub.StepOutputs) -> Tensor:
        if not self.options.main_loss:
            return out.student_logits.new_zeros(out.batch_size)
        return self._per_sample(out, taught_weight(out))

    def init_loss(self, out: kdhub.StepOutputs) -> Tensor:
        """The AB loss averaged over the batch (every sample: no class is stopped before training starts)."""
        return self._per_sample(out, None).mean()
