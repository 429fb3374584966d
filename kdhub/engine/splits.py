"""Held-out splits by the run seed, class-balanced: the same rule for tensors in memory
(:mod:`kdhub.engine.data`) and files streamed from disk (:mod:`kdhub.engine.stream`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["class_balanced_split"]


def class_balanced_split(labels: Tensor, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(kept, held-out) indices: class m gives round(fraction * N_m) samples to the held-out split."""
    if fraction <= 0:
        return torch.arange(len(labels)), torch.empty(0, dtype=torch.long)
    held = []
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().squeeze(1)
        take = math.floor(fraction * len(members) + 0.5)
        held.append(members[torch.randperm(len(members), generator=generator)[:take]])
    held_out = torch.cat(held).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_out] = False
    return keep.nonzero().squeeze(1), held_out


def _hold_out(labels: Tensor, kept: Tensor, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A second class-balanced split (``holdout``) out of the training data left after validation."""
    if fraction <= 0:
        return kept, torch.empty(0, dtype=torch.long)
    rest, held = class_balanced_split(labels[kept], fraction, generator)
    return kept[rest], kept[held]
