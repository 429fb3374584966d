"""An epoch's training sums, and the watch that stops a diverging run, without a host sync per step.

Every step adds its loss terms (on the device); the first step at which a term — or the total —
was NaN or infinite is remembered on the device too. The host looks every ``check_every`` steps
(one sync) and once at the end of the epoch, together with the epoch's other sums, and raises
:class:`kdhub.DivergedError` naming the epoch, the step and the terms.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kdhub.contract.errors import DivergedError
from kdhub.engine.distributed import DistEnv

__all__ = ["EpochTally"]


class EpochTally:
    """Loss sums, accuracy counts and first non-finite steps of one training epoch of one process."""

    def __init__(self, epoch: int, steps_per_epoch: int, device: torch.device, dist: DistEnv, check_every: int):
        self.epoch, self.steps_per_epoch, self.dist, self.check_every = epoch, steps_per_epoch, dist, check_every
        self.step0 = (epoch - 1) * steps_per_epoch
        self.sums: dict[str, Tensor] = {}
        self.first_bad_term: dict[str, Tensor] = {}  # per loss term: the first step it was not finite (-1: never)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # the same for the total loss
        self.correct = torch.zeros((), device=device)
        self.seen = torch.zeros((), device=device)

    def term(self, key: str, value: Tensor, step: int) -> None:
        """Add a step's (weighted, detached) loss term; remember the first step it was not finite."""
        self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        seen = self.first_bad_term.get(key)
        if seen is None:
            seen = torch.full((), -1, dtype=torch.long, device=value.device)
        self.first_bad_term[key] = torch.where((seen < 0) & ~torch.isfinite(value), step, seen)

    def step(self, loss: Tensor, logits: Tensor, labels: Tensor, step: int) -> None:
        """Close a step: the total loss, the accuracy counts, and (every ``check_every`` steps) the check."""
        self.sums["total"] = self.sums["total"] + loss if "total" in self.sums else loss.clone()
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += labels.numel()
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss), step, self.first_bad)
        if self.check_every and (step - self.step0 + 1) % self.check_every == 0:
            self._check()

    def finish(self, params: list[nn.Parameter]) -> tuple[dict[str, float], float, float]:
        """(mean loss per term over the processes' steps, correct, seen), after the one host sync of the epoch;
        raises DivergedError if a loss or the weights are not finite."""
        weights = torch.stack([p.detach().float().abs().sum() for p in params]).sum()
        bad = (self.first_bad >= 0).float()
        totals = torch.stack([v.float() for v in self.sums.values()] + [self.correct, self.seen, bad, weights])
        self.dist.all_reduce_([totals])
        *loss_sums, correct, seen, n_bad, weight_sum = totals.tolist()  # the one host sync of the epoch
        if n_bad or not math.isfinite(weight_sum):
            self._check(weights_finite=math.isfinite(weight_sum), synced=True)
        steps = self.steps_per_epoch * self.dist.world_size
        return {k: v / steps for k, v in zip(self.sums, loss_sums, strict=True)}, correct, seen

    def _check(self, weights_finite: bool = True, synced: bool = False) -> None:
        """Raise DivergedError naming the epoch, the step and the loss terms (every process stops together)."""
        if not synced:
            flag = (self.first_bad >= 0).float().reshape(1)
            self.dist.all_reduce_([flag])
            if not flag.item():
                return
        step = int(self.first_bad.item())
        if step >= 0:
            terms = [k for k, v in self.first_bad_term.items() if int(v.item()) == step]
            what = f"loss term {', '.join(repr(k) for k in terms)}" if terms else "the loss"
            where = f"epoch {self.epoch}, step {step - self.step0 + 1} of {self.steps_per_epoch} (global step {step})"
        elif not weights_finite:
            what, where = "the weights", f"the end of epoch {self.epoch}"
        else:
            what, where = "the loss of another process", f"epoch {self.epoch}"
        epoch = self.epoch
        kept = f"the checkpoints of epochs up to {epoch - 1} are kept" if epoch > 1 else "no epoch had finished"
        raise DivergedError(
            f"training diverged: {what} became non-finite at {where}; {kept} (lower optim.lr or the loss weights)"
        )
