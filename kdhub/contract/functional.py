"""Small numeric helpers that methods, policies and metrics share."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["kl_per_sample", "nanmean", "nanmin"]


def kl_per_sample(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``KL(softmax(z_t / T) || softmax(z_s / T))`` per sample, in ``dtype``.

    Computed from log-softmax on both sides, so a teacher probability that underflows gives 0,
    never NaN. Multiply by ``T^2`` for Hinton et al.'s KD loss.
    """
    log_p_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)


def nanmean(values: Iterable[float]) -> float:
    """Mean of the values that are not NaN (NaN when there are none): per-class means over classes."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def nanmin(values: Iterable[float]) -> float:
    """Smallest value that is not NaN (NaN when there are none)."""
    kept = [v for v in values if not math.isnan(v)]
    return min(kept) if kept else math.nan
