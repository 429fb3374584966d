"""Correlation congruence (Peng et al., ICCV 2019)."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

import kdhub
from kdhub_methods._feature_common import full_precision, require_vectors, role_shapes


def cc_loss_repdistiller(e_s: Tensor, e_t: Tensor) -> Tensor:
    """RepDistiller's form: ``mean_i sum_k |d_i,k| |d_i+1,k|`` with ``d = e_s - e_t`` (a scalar)."""
    delta = (e_s.float() - e_t.float()).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


@full_precision
def gaussian_correlation(e: Tensor, gamma: float, order: int) -> Tensor:
    """Taylor expansion of the Gaussian RBF kernel between L2-normalised embeddings: ``[B, B]``.

    ``exp(-gamma ||x - y||^2) = exp(-2 gamma) exp(2 gamma x.y) ~ sum_{p<=P} exp(-2 gamma) (2 gamma)^p / p! (x.y)^p``.
    """
    e = F.normalize(e.float(), dim=1)
    sim = e @ e.t()
    corr = torch.zeros_like(sim)
    power = torch.ones_like(sim)
    for p in range(order + 1):
        corr = corr + math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * power
        power = power * sim
    return corr


def cc_loss_gaussian(e_s: Tensor, e_t: Tensor, gamma: float, order: int) -> Tensor:
    """The paper's form: ``||C_t - C_s||_F^2 / B^2`` with the Gaussian correlation matrices (a scalar)."""
    return (gaussian_correlation(e_t, gamma, order) - gaussian_correlation(e_s, gamma, order)).square().mean()


class CC(kdhub.Method):
    """Correlation congruence: match the correlations between the samples of a batch (batch-relational).

    Paper: B. Peng, X. Jin, J. Liu, S. Zhou, Y. Wu, Y. Liu, D. Li, Z. Zhang, "Correlation
    Congruence for Knowledge Distillation", ICCV 2019.

    The pooled features of both models are mapped by trainable linear embeddings ``E_s``, ``E_t``
    (``embed_dim`` outputs, both trained, as in RepDistiller) to ``e_s``, ``e_t``.

    - ``form: repdistiller`` (default; the code RepDistiller got from the authors, for which its
      weight 0.02 is tuned): ``d_i = |e_s,i - e_t,i|``, ``loss = mean_i sum_k d_i,k d_i+1,k`` --
      consecutive samples of the batch are coupled.
    - ``form: gaussian`` (the paper's Eq. 6-9): ``C_ij = k(e_i, e_j)`` with the Gaussian RBF kernel
      on L2-normalised embeddings expanded to order ``order`` (``gamma``; paper: 0.4 and 2),
      ``loss = ||C_t - C_s||_F^2 / b^2``.

    Batch-relational: computed on the taught samples only. ``gamma`` and ``order`` may only be set
    with ``form: gaussian``.

    Reference recipe (CIFAR-100, RepDistiller): CE weight 1, CC weight 0.02, embedding 128::

        ce_weight: 1.0
        methods:
          - name: cc
            weight: 0.02
            options: {embed_dim: 128, form: repdistiller}
    """

    name = "cc"
    per_sample: ClassVar[bool] = False
    feature_roles = ("pooled",)
    default_weight: ClassVar[float] = 0.02
    paper: ClassVar[str] = "Peng et al. 2019"

    class Options(kdhub.Options):
        embed_dim: int = Field(128, ge=1, le=65536, description="output size of the linear embeddings of both models")
        form: Literal["repdistiller", "gaussian"] = Field(
            "repdistiller",
            description="repdistiller = the authors' code in RepDistiller; gaussian = the paper's kernel",
        )
        gamma: kdhub.FiniteFloat = Field(0.4, gt=0, le=1e4, description="Gaussian kernel width (form: gaussian only)")
        order: int = Field(2, ge=0, le=10, description="order of the kernel's Taylor expansion (form: gaussian only)")

        @model_validator(mode="after")
        def _kernel_options_need_gaussian(self) -> CC.Options:
            unused = {"gamma", "order"} & self.model_fields_set
            if unused and self.form != "gaussian":
                raise ValueError(f"options {', '.join(sorted(unused))} only apply to form: gaussian")
            return self

    options: Options

    def setup(self, ctx: kdhub.SetupContext) -> None:
        s_shapes, t_shapes = role_shapes(ctx, "pooled", self.name)
        require_vectors(s_shapes[0], self.name, "pooled", "student")
        require_vectors(t_shapes[0], self.name, "pooled", "teacher")
        self.embed_s = nn.Linear(s_shapes[0][0], self.options.embed_dim).to(ctx.device)
        self.embed_t = nn.Linear(t_shapes[0][0], self.options.embed_dim).to(ctx.device)

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        e_s = self.embed_s(out.student_features["pooled"][0])
        e_t = self.embed_t(out.teacher_features["pooled"][0])
        if self.options.form == "gaussian":
            return cc_loss_gaussian(e_s, e_t, self.options.gamma, self.options.order)
        return cc_loss_repdistiller(e_s, e_t)
