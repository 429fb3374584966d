"""DIST: knowledge distillation from a stronger teacher (Huang et al., NeurIPS 2022)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

import kdhub

_EPS = 1e-8  # the official code's epsilon in the cosine denominator


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (``[N, K] -> [N]``).

    As the official code: the cosine of the row-centred vectors, ``a.b / (|a| |b| + eps)``; a
    constant row gives correlation 0 (and a finite gradient).
    """
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DIST(kdhub.Method):
    """DIST: match the teacher's inter-class and intra-class relations by Pearson correlation.

    Paper: T. Huang, S. You, F. Wang, C. Qian, C. Xu, "Knowledge Distillation from A Stronger
    Teacher", NeurIPS 2022 (official code: hunto/DIST_KD).

    With Y_s = softmax(z_s / T) and Y_t = softmax(z_t / T), both ``[B, C]``, and rho the Pearson
    correlation:

    - inter-class relation: ``T^2 * mean_i (1 - rho(Y_s[i, :], Y_t[i, :]))`` (per sample, across classes);
    - intra-class relation: ``T^2 * mean_c (1 - rho(Y_s[:, c], Y_t[:, c]))`` (per class, across the batch);
    - loss ``= beta * inter + gamma * intra``, returned as the terms ``inter`` and ``intra``.

    The intra-class term relates the samples of a batch, so DIST is batch-relational
    (``per_sample = False``): under a class-selection policy both terms are computed on the taught
    samples only, and are 0 when fewer than 2 remain. (The inter-class term alone would decompose
    per sample; kdhub keeps the two together, as the paper does.)

    Defaults are the official module's: beta = gamma = 1, T = 1 (kdhub's default weight is 1). The
    official recipes (hunto/image_classification_sota: ``configs/strategies/distill/dist_cifar.yaml``,
    ``resnet_dist.yaml`` and ``lib/models/losses/kd_loss.py``) weight DIST by 2 with CE weight 1, at
    T = 4 on CIFAR-100 (``kd: dist_t4``) and T = 1 on ImageNet (``kd: dist``). CIFAR-100::

        ce_weight: 1.0
        methods:
          - name: dist
            weight: 2.0
            options: {beta: 1.0, gamma: 1.0, temperature: 4.0}

    ImageNet: the same with ``temperature: 1.0``.
    """

    name = "dist"
    per_sample: ClassVar[bool] = False
    output_based: ClassVar[bool] = True
    default_weight: ClassVar[float] = 1.0
    paper: ClassVar[str] = "Huang et al. NeurIPS 2022"

    class Options(kdhub.Options):
        beta: kdhub.FiniteFloat = Field(1.0, ge=0, le=1e6, description="weight of the inter-class relation term")
        gamma: kdhub.FiniteFloat = Field(1.0, ge=0, le=1e6, description="weight of the intra-class relation term")
        temperature: kdhub.FiniteFloat = Field(
            1.0, ge=0.01, le=100, description="softmax temperature T (loss scaled by T^2)"
        )

    options: Options

    def loss(self, out: kdhub.StepOutputs) -> dict[str, torch.Tensor]:
        o = self.options
        t = o.temperature
        y_s = (out.student_logits.float() / t).softmax(1)
        y_t = (out.teacher_logits.float() / t).softmax(1)
        scale = t * t
        inter = (1 - pearson_rows(y_s, y_t)).mean() * (scale * o.beta)
        intra = (1 - pearson_rows(y_s.t(), y_t.t())).mean() * (scale * o.gamma)
        return {"inter": inter, "intra": intra}
