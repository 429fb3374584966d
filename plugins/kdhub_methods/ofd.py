"""A Comprehensive Overhaul of Feature Distillation (Heo et al., ICCV 2019)."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

import kdhub
from kdhub_methods._feature_common import MaskedBatchNorm2d, require_maps, role_shapes, taught_weight


def bn_margin(weight: Tensor, bias: Tensor) -> Tensor:
    """Per channel, the expected value of the negative part of ``N(beta, gamma^2)``: ``E[x | x < 0]``.

    ``m = beta - |gamma| phi(beta/|gamma|) / Phi(-beta/|gamma|)`` where ``Phi(-beta/|gamma|) > 0.001``,
    else ``-3 |gamma|`` (the paper's Eq. 4 and its code's cut-off). Computed in float64.
    """
    s = weight.detach().double().abs()
    m = bias.detach().double()
    ratio = m / s
    cdf = torch.special.ndtr(-ratio)
    expected = -s * torch.exp(-(ratio**2) / 2) / math.sqrt(2 * math.pi) / cdf + m
    return torch.where(cdf > 0.001, expected, -3 * s).float()


def partial_l2(student: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    """The paper's partial L2 per sample, summed over ``(C, H, W)``: ``[B]``.

    The target is ``max(t, m)`` (the teacher's pre-ReLU value, its negative responses raised to the
    channel's margin); a position costs ``(s - target)^2`` unless ``s <= target <= 0`` (a student
    response already below a non-positive target passes the ReLU the same way).
    """
    s = student.float()
    target = torch.maximum(teacher.float(), margin.view(1, -1, 1, 1))
    cost = (s - target).square() * ((s > target) | (target > 0))
    return cost.flatten(1).sum(dim=1)


class Connector(nn.Module):
    """OFD's student-side connector: conv (no bias) to the teacher's channels, then BatchNorm.

    Initialised as the paper's code does (conv ``N(0, 2 / (k^2 C_out))``, BN weight 1, bias 0); the
    BatchNorm takes its batch statistics from the taught samples only.
    """

    def __init__(self, s_channels: int, t_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(s_channels, t_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = MaskedBatchNorm2d(t_channels)
        nn.init.normal_(self.conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channels)))

    def forward(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        return self.bn(self.conv(x), weight)


class OFD(kdhub.Method):
    """Overhaul of feature distillation: pre-ReLU features, teacher margins and a partial L2 distance.

    Paper: B. Heo, J. Kim, S. Yun, H. Park, N. Kwak, J. Y. Choi, "A Comprehensive Overhaul of Feature
    Distillation", ICCV 2019; reference code clovaai/overhaul-distillation and mdistiller's ``OFD.py``.

    For the ``preact_stages`` features ``F_s``, ``F_t`` (before the final ReLU of each stage), a
    connector ``r`` (conv + BN) maps the student to the teacher's channels; the teacher map is
    average-pooled to the student's spatial size when they differ. Per sample, over ``n`` stages:

        l_i = sum_k 2^-(n-k-1) * sum_{c,h,w} d_p(r(F_s,k), max(F_t,k, m_k))
        d_p(s, t) = 0 if s <= t <= 0 else (s - t)^2

    where the margin ``m_k[c] = E[x | x < 0]`` for ``x ~ N(beta_c, gamma_c^2)`` comes from the
    teacher's BatchNorm before that ReLU (role ``bn_before_relu``; ``-3 |gamma_c|`` when
    ``Phi(-beta_c / |gamma_c|) <= 0.001``). Its batch mean is mdistiller's ``feat_loss`` sum.

    kdhub's reading: the margins are read once at setup, from the teacher's weights as loaded
    then (the teacher is frozen), and kept as buffers in checkpoints. The teacher is only read:
    it is never a submodule of the method and keeps the engine's eval mode (mdistiller's
    ``OFD.train()`` puts it in train mode). When the models have different numbers of stages, the
    last ones are paired, margins included. The connector's BatchNorm takes its batch statistics
    from the taught samples only, so a stopped class gets no gradient. Needs ``preact_stages`` on
    both models and ``bn_before_relu`` (module names) on the teacher.

    Reference recipe (CIFAR-100, mdistiller): CE weight 1, OFD weight 0.001, 1x1 connector::

        ce_weight: 1.0
        methods:
          - name: ofd
            weight: 0.001
            options: {kernel_size: 1}
    """

    name = "ofd"
    feature_roles = ("preact_stages",)
    default_weight: ClassVar[float] = 0.001
    paper: ClassVar[str] = "Heo et al. 2019"

    class Options(kdhub.Options):
        kernel_size: Literal[1, 3] = Field(1, description="kernel size of the student-side connector conv")

    options: Options

    def setup(self, ctx: kdhub.SetupContext) -> None:
        s_shapes, t_shapes = role_shapes(ctx, "preact_stages", self.name)
        names = ctx.teacher_taps.get("bn_before_relu")
        if not names or ctx.teacher is None:
            have = ", ".join(sorted(ctx.teacher_taps)) or "none"
            raise kdhub.IncompatibleError(
                "method 'ofd' needs the teacher's BatchNorm layers before each final ReLU (role 'bn_before_relu'), "
                f"which the teacher model does not name (it names: {have})"
            )
        if len(names) != len(t_shapes):
            raise kdhub.IncompatibleError(
                f"method 'ofd': the teacher names {len(names)} 'bn_before_relu' layers for {len(t_shapes)} "
                "'preact_stages' features; they must pair one to one"
            )
        n = min(len(s_shapes), len(t_shapes))
        s_shapes, t_shapes, names = s_shapes[-n:], t_shapes[-n:], names[-n:]
        modules = dict(ctx.teacher.named_modules())
        self.num_stages = n
        self.connectors = nn.ModuleList()
        for k, (s_shape, t_shape, bn_name) in enumerate(zip(s_shapes, t_shapes, names, strict=True)):
            require_maps(s_shape, self.name, "preact_stages", "student")
            require_maps(t_shape, self.name, "preact_stages", "teacher")
            bn = modules.get(bn_name.partition(":")[0])
            weight, bias = getattr(bn, "weight", None), getattr(bn, "bias", None)
            if not isinstance(weight, Tensor) or not isinstance(bias, Tensor) or weight.shape != (t_shape[0],):
                raise kdhub.IncompatibleError(
                    f"method 'ofd': teacher module {bn_name!r} (role 'bn_before_relu') is not an affine BatchNorm "
                    f"with {t_shape[0]} channels"
                )
            self.register_buffer(f"margin{k}", bn_margin(weight, bias))
            self.connectors.append(Connector(s_shape[0], t_shape[0], self.options.kernel_size))
        self.to(ctx.device)

    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin{k}") for k in range(self.num_stages)]

    def loss(self, out: kdhub.StepOutputs) -> Tensor:
        n = self.num_stages
        f_s = out.student_features["preact_stages"][-n:]
        f_t = out.teacher_features["preact_stages"][-n:]
        weight = taught_weight(out)
        total: Tensor | int = 0
        for k, (connector, s, t, margin) in enumerate(zip(self.connectors, f_s, f_t, self.margins(), strict=True)):
            s = connector(s, weight)
            if t.shape[-2:] != s.shape[-2:]:
                t = F.adaptive_avg_pool2d(t, s.shape[-2:])
            total = total + partial_l2(s, t.detach(), margin) / 2 ** (n - k - 1)
        return total  # type: ignore[return-value]
