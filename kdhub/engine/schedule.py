"""Learning-rate schedules as per-step factors (so warm-up and cosine are smooth within epochs)."""

from __future__ import annotations

import math

import torch

from kdhub.contract.base import resolve_epoch
from kdhub.contract.config import OptimConfig, ScheduleConfig

__all__ = ["lr_factor", "make_optimizer", "make_scheduler"]


def make_optimizer(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, epochs: int, cfg: ScheduleConfig, base_lr: float) -> float:
    """The factor on the base lr after ``step`` optimizer steps of a run of ``epochs`` epochs."""
    epoch = step / steps_per_epoch  # fractional epochs done
    warm = cfg.warmup_epochs
    factor = min(1.0, (epoch + 1 / steps_per_epoch) / warm) if warm > 0 and epoch < warm else 1.0
    if cfg.name == "multistep":
        milestones = [resolve_epoch(m, epochs) for m in cfg.milestones]
        factor *= cfg.gamma ** sum(1 for m in milestones if int(epoch) >= m)
    elif cfg.name == "cosine":
        progress = min(1.0, max(0.0, (epoch - warm) / max(1e-9, epochs - warm)))
        floor = cfg.min_lr / base_lr
        factor *= floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int, base_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, epochs, cfg, base_lr)
    )
