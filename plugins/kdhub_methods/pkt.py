"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

import kdhub
from kdhub_methods._feature_common import full_precision, require_vectors, role_shapes

EPS = 1e-7


@full_precision
def conditional_probabilities(e: Tensor, eps: float = EPS) -> Tensor:
    """``P_ij = K_ij / sum_j K_ij`` with the cosine kernel rescaled to [0, 1]: ``K = (1 + cos) / 2``."""
    e = e.float()
    e = e / (e.norm(dim=1, keepdim=True) + eps)
    kernel = (e @ e.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(e_s: Tensor, e_t: Tensor, eps: float = EPS) -> Tensor:
    """``mean_ij P^t_ij log((P^t_ij + eps) / (P^s_ij + eps))`` over the ``B x B`` entries (a scalar)."""
    p_s = conditional_probabilities(e_s, eps)
    p_t = conditional_probabilities(e_t, eps)
    return (p_t * ((p_t + eps) / (p_s + eps)).log()).mean()


class PKT(kdhub.Method):
    """Probabilistic knowledge transfer: match the batch's conditional similarity distributions (batch-relational).

    Paper: N. Passalis, A. Tefas, "Learning Deep Representations with Probabilistic Knowledge
    Transfer", ECCV 2018.

    On the pooled features ``e`` of a batch: ``K_ij = (1 + cos(e_i, e_j)) / 2``, ``P_ij = K_ij /
    sum_j K_ij``, ``loss = mean_{i,j} P^t_ij log((P^t_ij + eps) / (P^s_ij + eps))`` with
    ``eps = 1e-7`` -- the authors' code as used by RepDistiller. The mean over all ``b^2`` entries
    is the mean row KL divided by ``b``; RepDistiller's weight 30000 is tuned for it. Unlike the
    authors' code, NaN features are not zeroed (a NaN feature is a bug to surface, not to hide).

    Batch-relational: computed on the taught samples only.

    Reference recipe (CIFAR-100, RepDistiller): CE weight 1, PKT weight 30000::

        ce_weight: 1.0
        methods:
          - name: pkt
            weight: 30000
    """

    name = "pkt"
    per_sample: ClassVar[bool] = False
    feature_roles = ("pooled",)
    default_weight: ClassVar[float] = 30000.0
    paper: ClassVar[str] = "Passalis & Tefas 2018"

    def setup(self, ctx: kdhub.SetupContext) -> None:
        s_shapes, t_shapes = role_shapes(ctx, "pooled", self.name)
        require_vectors(s_shapes[0], self.name, "pooled", "student")
        require_vectors(t_shapes[0], self.name, "pooled", "teacher")

    def loss(self, out: kdhub.StepOutputs) -> Tensor:
        return pkt_loss(out.student_features["pooled"][0].flatten(1), out.teacher_features["pooled"][0].flatten(1))
