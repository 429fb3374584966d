"""Similarity-preserving knowledge distillation (Tung & Mori, ICCV 2019)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

import kdhub
from kdhub_methods._feature_common import Stages, full_precision, resolve_stages, role_shapes


@full_precision
def similarity_matrix(f: Tensor) -> Tensor:
    """Row-normalised Gram matrix of the flattened batch: ``normalize(F F^T)``, ``[B, B]``."""
    flat = f.float().flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """``||G_t - G_s||_F^2 / B^2`` (a scalar)."""
    batch = f_s.shape[0]
    return (similarity_matrix(f_t) - similarity_matrix(f_s)).square().sum() / (batch * batch)


class SP(kdhub.Method):
    """Similarity-preserving KD: match the batch's pairwise similarity matrices (batch-relational).

    Paper: F. Tung, G. Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

    For the stage outputs of a batch of ``b`` samples, flattened to ``Q`` (``b x CHW``), the
    similarity matrix is ``G = normalize_rows(Q Q^T)``; the loss is ``sum_stages ||G_t - G_s||_F^2
    / b^2`` (RepDistiller's code, "verified by the original author"). The student and teacher maps
    may differ in channels and size: only the ``b x b`` matrices are compared.

    Batch-relational: computed on the taught samples only. ``stages`` defaults to the last stage
    (RepDistiller's ``feat[-2]``).

    Reference recipe (CIFAR-100, RepDistiller): CE weight 1, SP weight 3000::

        ce_weight: 1.0
        methods:
          - name: sp
            weight: 3000
            options: {stages: [-1]}
    """

    name = "sp"
    per_sample: ClassVar[bool] = False
    feature_roles = ("stages",)
    default_weight: ClassVar[float] = 3000.0
    paper: ClassVar[str] = "Tung & Mori 2019"

    class Options(kdhub.Options):
        stages: Stages = Field(
            (-1,),
            min_length=1,
            max_length=64,
            description="indices into 'stages' of both models (negative from the end)",
        )

    options: Options

    def setup(self, ctx: kdhub.SetupContext) -> None:
        s_shapes, t_shapes = role_shapes(ctx, "stages", self.name)
        self._stages = resolve_stages(len(s_shapes), len(t_shapes), self.options.stages, self.name)

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        g_s, g_t = out.student_features["stages"], out.teacher_features["stages"]
        return torch.stack([sp_loss(g_s[i], g_t[i]) for i in self._stages]).sum()
