"""Neuron selectivity transfer (Huang & Wang, 2017)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

import kdhub
from kdhub_methods._feature_common import (
    Stages,
    full_precision,
    match_spatial,
    require_maps,
    resolve_stages,
    role_shapes,
)


@full_precision
def poly_kernel_mean(a: Tensor, b: Tensor, degree: int, offset: float) -> Tensor:
    """Per-sample mean over channel pairs of ``(a_i . b_j + c)^d`` for ``a`` ``[B, Ca, N]``, ``b`` ``[B, Cb, N]``."""
    gram = torch.bmm(a, b.transpose(1, 2))
    if offset != 0:
        gram = gram + offset
    return gram.pow(degree).flatten(1).mean(dim=1)


def nst_loss(f_s: Tensor, f_t: Tensor, degree: int = 2, offset: float = 0.0) -> Tensor:
    """Per-sample squared MMD between the channels' spatial distributions, polynomial kernel: ``[B]``."""
    f_s, f_t = match_spatial(f_s, f_t)
    s = F.normalize(f_s.float().flatten(2), dim=2)
    t = F.normalize(f_t.float().flatten(2), dim=2)
    return (
        poly_kernel_mean(t, t, degree, offset)
        + poly_kernel_mean(s, s, degree, offset)
        - 2 * poly_kernel_mean(s, t, degree, offset)
    )


class NST(kdhub.Method):
    """Neuron selectivity transfer: match the distributions of the channels' spatial activation patterns (MMD).

    Paper: Z. Huang, N. Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer", arXiv:1707.01219, 2017.

    For one sample and a stage, each channel ``c`` gives a vector ``f_c`` over the ``H*W``
    positions, L2-normalised. With ``k(x, y) = (x . y + c)^d`` the loss is the squared maximum
    mean discrepancy between the sets of student and teacher channels:
    ``MMD^2 = mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') - 2 mean_{i,j} k(s_j, t_i)``,
    summed over the chosen stages. The paper's and RepDistiller's kernel is polynomial with
    ``d = 2, c = 0``.

    kdhub's reading: the MMD compares the channels *within one image*, so the loss is per sample
    (mean over the batch = RepDistiller's value) and a class-selection policy can drop samples.
    Maps of different spatial size are matched by average-pooling the larger (RepDistiller);
    ``stages`` defaults to all (``feat[1:-1]``); channel counts may differ.

    Reference recipe (CIFAR-100, RepDistiller): CE weight 1, NST weight 50::

        ce_weight: 1.0
        methods:
          - name: nst
            weight: 50
            options: {degree: 2, offset: 0.0}
    """

    name = "nst"
    feature_roles = ("stages",)
    default_weight: ClassVar[float] = 50.0
    paper: ClassVar[str] = "Huang & Wang 2017"

    class Options(kdhub.Options):
        stages: Stages | None = Field(
            None, max_length=64, description="indices into 'stages' of both models (negative from the end); None = all"
        )
        degree: int = Field(2, ge=1, le=8, description="degree d of the polynomial kernel (x.y + c)^d")
        offset: kdhub.FiniteFloat = Field(
            0.0, ge=0, le=1e4, description="offset c of the polynomial kernel (x.y + c)^d"
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
        opts = self.options
        return torch.stack([nst_loss(g_s[i], g_t[i], opts.degree, opts.offset) for i in self._stages]).sum(dim=0)
