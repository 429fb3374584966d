"""Decoupled knowledge distillation (Zhao et al., CVPR 2022)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

import kdhub


def _target_mask(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, C]``, True at each sample's ground-truth class (scatter: no host sync, unlike one_hot)."""
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels.unsqueeze(1), True)


def dkd_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(TCKD, NCKD)``, each already multiplied by ``T^2``.

    Everything is computed in log space, so no probability is ever logged after underflowing
    (mdistiller takes ``log`` of summed probabilities and masks with ``-1000``; the values agree).
    The binary distribution ``[p_y, 1 - p_y]`` comes from the target's log-odds against the
    non-target classes, ``d = z_y - logsumexp_{k != y} z_k``: ``log p_y = logsigmoid(d)`` and
    ``log(1 - p_y) = logsigmoid(-d) = -softplus(d)``. So ``log(1 - p_y)`` keeps full float32
    precision when ``p_y`` is tiny, where ``logsumexp_{k != y} - logsumexp_k`` would cancel.
    """
    t = temperature
    z_s = student_logits.float() / t
    z_t = teacher_logits.float() / t
    target = _target_mask(z_s, labels)
    y = labels.unsqueeze(1)

    nt_lse_s = z_s.masked_fill(target, float("-inf")).logsumexp(1, keepdim=True)
    nt_lse_t = z_t.masked_fill(target, float("-inf")).logsumexp(1, keepdim=True)
    d_s = z_s.gather(1, y) - nt_lse_s  # log(p_y / (1 - p_y))
    d_t = z_t.gather(1, y) - nt_lse_t

    # binary distributions [p_y, 1 - p_y] in log space
    log_b_s = torch.cat([F.logsigmoid(d_s), F.logsigmoid(-d_s)], dim=1)
    log_b_t = torch.cat([F.logsigmoid(d_t), F.logsigmoid(-d_t)], dim=1)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(1)

    # distributions over the non-target classes; the target entry is finite and weighted by 0
    log_n_s = z_s - nt_lse_s
    log_n_t = z_t - nt_lse_t
    p_n_t = log_n_t.exp().masked_fill(target, 0.0)
    nckd = (p_n_t * (log_n_t - log_n_s)).sum(1)
    return tckd * (t * t), nckd * (t * t)


class DKD(kdhub.Method):
    """Decoupled KD: split the KD loss into target-class (TCKD) and non-target-class (NCKD) terms.

    Paper: B. Zhao, Q. Cui, R. Song, Y. Qiu, J. Liang, "Decoupled Knowledge Distillation", CVPR 2022
    (official code: megvii-research/mdistiller).

    With p = softmax(z / T) and y the label, per sample:

    - ``TCKD = T^2 * KL([p_y, 1 - p_y]_t || [p_y, 1 - p_y]_s)`` (binary target / rest distributions);
    - ``NCKD = T^2 * KL(p^_t || p^_s)`` with p^ the softmax over the non-target classes only;
    - ``l_i = min(e / warmup, 1) * (alpha * TCKD + beta * NCKD)``, epochs e counted from 1 as in
      mdistiller (``warmup: 0`` switches the warm-up off).

    The two weighted terms are returned separately (``tckd`` and ``nckd``) so both are logged; their
    sum is the DKD loss. The loss decomposes per sample.

    Reference recipe (CIFAR-100, mdistiller's ``configs/cifar100/dkd/*.yaml`` over the defaults of
    ``mdistiller/engine/cfg.py``): CE weight 1, alpha = 1, beta = 8 (2 for resnet56 -> resnet20 and
    resnet110 -> resnet32; 6 for wrn_40_2 -> wrn_16_2, wrn_40_2 -> wrn_40_1, vgg13 -> vgg8 and
    vgg13 -> MobileNetV2; 8, the default, for wrn_40_2 -> ShuffleV1 and the resnet32x4 / ResNet50
    pairs), T = 4, 20 warm-up epochs::

        ce_weight: 1.0
        methods:
          - name: dkd
            weight: 1.0
            options: {alpha: 1.0, beta: 8.0, temperature: 4, warmup: 20}
    """

    name = "dkd"
    output_based: ClassVar[bool] = True
    default_weight: ClassVar[float] = 1.0
    paper: ClassVar[str] = "Zhao et al. CVPR 2022"

    class Options(kdhub.Options):
        alpha: kdhub.FiniteFloat = Field(1.0, ge=0, le=1e4, description="weight of the target-class term TCKD")
        beta: kdhub.FiniteFloat = Field(8.0, ge=0, le=1e4, description="weight of the non-target-class term NCKD")
        temperature: kdhub.FiniteFloat = Field(4.0, ge=0.01, le=100, description="softmax temperature T")
        warmup: int = Field(
            20, ge=0, le=100_000, description="epochs of linear warm-up min(epoch / warmup, 1); 0 = none"
        )

    options: Options

    def warmup_factor(self, epoch: int) -> float:
        """``min(epoch / warmup, 1)`` (epochs from 1); 1 when the warm-up is off."""
        warmup = self.options.warmup
        return 1.0 if warmup == 0 else min(epoch / warmup, 1.0)

    def loss(self, out: kdhub.StepOutputs) -> dict[str, torch.Tensor]:
        o = self.options
        tckd, nckd = dkd_terms(out.student_logits, out.teacher_logits, out.labels, o.temperature)
        factor = self.warmup_factor(out.epoch)
        return {"tckd": tckd * (o.alpha * factor), "nckd": nckd * (o.beta * factor)}
