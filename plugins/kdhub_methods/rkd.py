"""Relational knowledge distillation (Park et al., CVPR 2019)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

import kdhub
from kdhub_methods._feature_common import full_precision, require_vectors, role_shapes


@full_precision
def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances ``[B, B]`` (squared distances clamped at ``eps``), zero diagonal."""
    sq = e.square().sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=eps)
    off_diagonal = 1.0 - torch.eye(e.shape[0], device=e.device, dtype=e.dtype)
    return d2.sqrt() * off_diagonal


def normalised_distances(e: Tensor) -> Tensor:
    """Distances divided by their mean over the off-diagonal pairs (the clamp keeps them all > 0)."""
    d = pairwise_distances(e)
    b = e.shape[0]
    return d / (d.sum() / (b * (b - 1)))


@full_precision
def angles(e: Tensor) -> Tensor:
    """``cos`` of the angle at vertex ``i`` between ``e_j - e_i`` and ``e_k - e_i``, flattened ``[B^3]``."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_distance(e_s: Tensor, e_t: Tensor) -> Tensor:
    """Huber (smooth L1, delta 1) loss between mean-normalised distance matrices (a scalar)."""
    with torch.no_grad():
        t = normalised_distances(e_t.float())
    return F.smooth_l1_loss(normalised_distances(e_s.float()), t)


def rkd_angle(e_s: Tensor, e_t: Tensor) -> Tensor:
    """Huber (smooth L1, delta 1) loss between the triplet angle cosines (a scalar)."""
    with torch.no_grad():
        t = angles(e_t.float())
    return F.smooth_l1_loss(angles(e_s.float()), t)


class RKD(kdhub.Method):
    """Relational KD: match the distances and angles among the samples of a batch (batch-relational).

    Paper: W. Park, D. Kim, Y. Lu, M. Cho, "Relational Knowledge Distillation", CVPR 2019.

    On the pooled features ``e`` of a batch of ``b`` samples:
    ``psi_D(i, j) = ||e_i - e_j|| / mu`` with ``mu`` the mean distance over the ``b(b-1)`` pairs;
    ``psi_A(i, j, k) = <(e_j - e_i)/||e_j - e_i||, (e_k - e_i)/||e_k - e_i||>``;
    ``loss = w_D * Huber(psi_D^s, psi_D^t) + w_A * Huber(psi_A^s, psi_A^t)``, each Huber loss
    (delta 1) averaged over all ``b^2`` (distance) and ``b^3`` (angle) entries, as RepDistiller's code.
    The two terms are returned (and logged) separately as ``distance`` and ``angle``; a term with
    weight 0 is not computed.

    Batch-relational: computed on the taught samples only. Cost and memory grow as ``b^3`` (angle).

    Reference recipe (CIFAR-100, RepDistiller): CE weight 1, RKD weight 1, w_D = 25, w_A = 50::

        ce_weight: 1.0
        methods:
          - name: rkd
            weight: 1
            options: {distance_weight: 25, angle_weight: 50}
    """

    name = "rkd"
    per_sample: ClassVar[bool] = False
    feature_roles = ("pooled",)
    default_weight: ClassVar[float] = 1.0
    paper: ClassVar[str] = "Park et al. 2019"

    class Options(kdhub.Options):
        distance_weight: kdhub.FiniteFloat = Field(25.0, ge=0, le=1e6, description="weight w_D of the distance term")
        angle_weight: kdhub.FiniteFloat = Field(50.0, ge=0, le=1e6, description="weight w_A of the angle term")

        @model_validator(mode="after")
        def _one_term(self) -> RKD.Options:
            if self.distance_weight == 0 and self.angle_weight == 0:
                raise ValueError("distance_weight and angle_weight are both 0: nothing to distil")
            return self

    options: Options

    def setup(self, ctx: kdhub.SetupContext) -> None:
        s_shapes, t_shapes = role_shapes(ctx, "pooled", self.name)
        require_vectors(s_shapes[0], self.name, "pooled", "student")
        require_vectors(t_shapes[0], self.name, "pooled", "teacher")

    def loss(self, out: kdhub.StepOutputs) -> dict[str, Tensor]:
        e_s = out.student_features["pooled"][0].flatten(1)
        e_t = out.teacher_features["pooled"][0].flatten(1)
        terms = {}
        if self.options.distance_weight > 0:
            terms["distance"] = self.options.distance_weight * rkd_distance(e_s, e_t)
        if self.options.angle_weight > 0:
            terms["angle"] = self.options.angle_weight * rkd_angle(e_s, e_t)
        return terms
