"""Variational information distillation (Ahn et al., CVPR 2019)."""

from __future__ import annotations

import math
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

import kdhub
from kdhub_methods._feature_common import Stages, match_spatial, require_maps, resolve_stages, role_shapes


def inverse_softplus(y: float) -> float:
    """``x`` with ``log(1 + exp(x)) = y``."""
    return math.log(math.expm1(y))


def vid_nll(pred_mean: Tensor, target: Tensor, log_scale: Tensor, eps: float) -> Tensor:
    """Per-sample Gaussian negative log-likelihood (without the constant), mean over ``(C, H, W)``: ``[B]``.

    ``sigma_c^2 = softplus(log_scale_c) + eps``; ``0.5 * ((mu - t)^2 / sigma^2 + log sigma^2)``.
    """
    var = (F.softplus(log_scale.float()) + eps).view(1, -1, 1, 1)
    nll = 0.5 * ((pred_mean.float() - target.float()).square() / var + var.log())
    return nll.flatten(1).mean(dim=1)


class _VIDStage(nn.Module):
    """Regressor ``mu(F_s)`` (three 1x1 convs with ReLUs) and the per-channel variances of one stage."""

    def __init__(self, c_s: int, c_mid: int, c_t: int, init_var: float, eps: float) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(c_s, c_mid, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c_mid, c_mid, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c_mid, c_t, 1, bias=False),
        )
        # A registered Parameter, so the optimizer trains it (kept in a plain list it never would be).
        self.log_scale = nn.Parameter(torch.full((c_t,), inverse_softplus(init_var - eps)))


class VID(kdhub.Method):
    """Variational information distillation: maximise a variational lower bound on I(teacher; student).

    Paper: S. Ahn, S. X. Hu, A. Damianou, N. D. Lawrence, Z. Dai, "Variational Information
    Distillation for Knowledge Transfer", CVPR 2019.

    For each chosen stage, the teacher map ``t`` is modelled as Gaussian given the student map:
    mean ``mu(F_s)`` (1x1 conv -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv, hidden width
    ``mid_channels``, default the teacher's channel count as in RepDistiller) and per-channel
    variance ``sigma_c^2 = softplus(alpha_c) + eps``, ``alpha`` initialised so that
    ``sigma^2 = init_variance``. Per sample: ``l_i = sum_stages mean_{c,h,w} 0.5 * ((mu - t)^2 /
    sigma_c^2 + log sigma_c^2)``. The ``alpha_c`` are registered parameters and are
    trained, as in RepDistiller (``distiller_zoo/VID.py`` registers ``log_scale`` in the trained
    ``VIDLoss`` module); mdistiller's ``distillers/VID.py`` keeps them in a plain list left out of
    ``get_learnable_parameters``, so its variances stay at their initial value.

    kdhub's reading: maps of different spatial size are matched by average-pooling the larger
    (RepDistiller); ``stages`` defaults to all (``feat[1:-1]``).

    Reference recipe (CIFAR-100, RepDistiller): CE weight 1, VID weight 1, init variance 5::

        ce_weight: 1.0
        methods:
          - name: vid
            weight: 1
            options: {init_variance: 5.0}
    """

    name = "vid"
    feature_roles = ("stages",)
    default_weight: ClassVar[float] = 1.0
    paper: ClassVar[str] = "Ahn et al. 2019"

    class Options(kdhub.Options):
        stages: Stages | None = Field(
            None, max_length=64, description="indices into 'stages' of both models (negative from the end); None = all"
        )
        init_variance: kdhub.FiniteFloat = Field(5.0, gt=0, le=1e6, description="initial per-channel variance sigma^2")
        eps: kdhub.FiniteFloat = Field(1e-5, gt=0, le=1, description="lower bound added to the variance")
        mid_channels: int | None = Field(
            None, ge=1, le=65536, description="hidden width of the regressor; None = the teacher stage's channels"
        )

        @model_validator(mode="after")
        def _variance_above_eps(self) -> VID.Options:
            if self.init_variance <= self.eps:
                raise ValueError("init_variance must exceed eps")
            return self

    options: Options

    def setup(self, ctx: kdhub.SetupContext) -> None:
        s_shapes, t_shapes = role_shapes(ctx, "stages", self.name)
        self._stages = resolve_stages(len(s_shapes), len(t_shapes), self.options.stages, self.name)
        heads = []
        for i in self._stages:
            require_maps(s_shapes[i], self.name, "stages", "student")
            require_maps(t_shapes[i], self.name, "stages", "teacher")
            c_s, c_t = s_shapes[i][0], t_shapes[i][0]
            mid = self.options.mid_channels or c_t
            heads.append(_VIDStage(c_s, mid, c_t, self.options.init_variance, self.options.eps))
        self.heads = nn.ModuleList(heads).to(ctx.device)

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        g_s, g_t = out.student_features["stages"], out.teacher_features["stages"]
        losses = []
        for head, i in zip(cast("list[_VIDStage]", self.heads), self._stages, strict=True):
            f_s, f_t = match_spatial(g_s[i], g_t[i])
            losses.append(vid_nll(head.regressor(f_s), f_t, head.log_scale, self.options.eps))
        return torch.stack(losses).sum(dim=0)
