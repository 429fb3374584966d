"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

import kdhub
from kdhub_methods._feature_common import Stages, match_spatial, require_maps, resolve_stages, role_shapes


def attention_map(f: Tensor, p: float) -> Tensor:
    """``normalize(mean_c |f|^p)`` flattened over space: ``[B, H*W]``."""
    f = f.float()
    powered = f.square() if p == 2 else f.abs().pow(p)
    return F.normalize(powered.mean(dim=1).flatten(1), dim=1)


def at_loss(f_s: Tensor, f_t: Tensor, p: float) -> Tensor:
    """Per-sample ``mean_hw (a_s - a_t)^2`` after pooling the larger map to the smaller size: ``[B]``."""
    f_s, f_t = match_spatial(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).square().mean(dim=1)


class AT(kdhub.Method):
    """Attention transfer: match the normalised spatial attention maps of each stage.

    Paper: S. Zagoruyko, N. Komodakis, "Paying More Attention to Attention: Improving the
    Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017.

    For a stage output ``F`` (``C x H x W``), the attention map is ``a = vec(mean_c |F_c|^p) /
    ||vec(mean_c |F_c|^p)||_2``. Per sample: ``l_i = sum_stages mean_hw (a_s - a_t)^2``. This is
    RepDistiller's form (squared difference averaged over positions and the batch), for which its
    weight 1000 is tuned; the paper writes ``beta/2 * ||a_s - a_t||_p`` per stage.

    kdhub's reading: when the student and teacher maps of a stage differ in size, the larger is
    average-pooled to the smaller (as RepDistiller does), not interpolated. ``stages`` (default
    all, RepDistiller's ``feat[1:-1]``) needs equal stage counts on both sides unless given.
    The loss is a mean over positions of unit-norm maps, so it grows as maps shrink: the weight
    1000 suits 32x32 CIFAR inputs; on 8x8 inputs (digits) about 10 trains well.

    Reference recipe (CIFAR-100, RepDistiller): CE weight 1, AT weight 1000, p = 2::

        ce_weight: 1.0
        methods:
          - name: at
            weight: 1000
            options: {p: 2}
    """

    name = "at"
    feature_roles = ("stages",)
    default_weight: ClassVar[float] = 1000.0
    paper: ClassVar[str] = "Zagoruyko & Komodakis 2017"

    class Options(kdhub.Options):
        p: kdhub.FiniteFloat = Field(
            2.0, gt=0, le=8, description="power of |F| in the attention map (the paper uses 2)"
        )
        stages: Stages | None = Field(
            None, max_length=64, description="indices into 'stages' of both models (negative from the end); None = all"
        )

    options: Options

    def setup(self, ctx: kdhub.SetupContext) -> None:
        s_shapes, t_shapes = role_shapes(ctx, "stages", self.name)
        self._stages = resolve_stages(len(s_shapes), len(t_shapes), self.options.stages, self.name)
        for i in self._stages:
            require_maps(s_shapes[i], self.name, "stages", "student")
            require_maps(t_shapes[i], self.name, "stages", "teacher")

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        g_s, g_t = out.student_features["stages"], out.teacher_features["stages"]
        losses = [at_loss(g_s[i], g_t[i], self.options.p) for i in self._stages]
        return torch.stack(losses).sum(dim=0)
