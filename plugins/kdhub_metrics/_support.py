"""Shared helpers of the analysis metrics: summable fixed-seed subsamples and line fits."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["SampleBuffer", "add_at", "fit_line", "role_shapes"]


def add_at(target: Tensor, index: Tensor, values: Tensor | None = None) -> None:
    """``target[index[i]] += values[i]`` (or 1): a weighted ``bincount`` without its host sync, deterministic."""
    if values is None:
        values = torch.ones(index.shape[0], dtype=target.dtype, device=target.device)
    target.index_add_(0, index, values.to(target.dtype))


class SampleBuffer:
    """Values of chosen samples of an evaluated split, kept in slots that sum across processes.

    Sample ``chosen[j]`` (an index as in ``EvalBatch.indices``) owns slot ``j``; ``add`` writes its
    values and a count of 1 into that slot with ``index_copy_`` (no host sync, deterministic) and
    sends every other sample to a spare last slot that is never read. Summing the buffers across
    processes therefore gives the union of what every process saw, and a sample that two
    processes both saw (a distributed sampler that pads with repeats) is averaged back by its
    count. The choice depends only on the sample indices, not on the batch order or the number
    of processes.
    """

    def __init__(self, chosen: Tensor, device: torch.device | str) -> None:
        self.chosen = chosen.long().cpu()
        self.size = self.chosen.numel()
        slot_of = torch.full((int(self.chosen.max()) + 1 if self.size else 1,), self.size, dtype=torch.long)
        slot_of[self.chosen] = torch.arange(self.size)
        self.device = torch.device(device)
        self.slot_of = slot_of.to(self.device)
        self.counts = torch.zeros(self.size + 1, dtype=torch.float32, device=self.device)
        self.values: dict[str, Tensor] = {}

    @classmethod
    def random(cls, num_samples: int, capacity: int, seed: int, device: torch.device | str) -> SampleBuffer:
        """A fixed-seed subsample: ``randperm(num_samples, seed)[:capacity]`` (a prefix of one permutation,
        so a smaller capacity gives a subset). With ``num_samples`` unknown (0), indices < capacity."""
        if num_samples <= 0:
            return cls(torch.arange(capacity), device)
        perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
        return cls(perm[: min(capacity, num_samples)], device)

    def slots(self, indices: Tensor) -> Tensor:
        """The slot of each sample index (the spare slot for samples that are not chosen)."""
        n = self.slot_of.numel()
        indices = indices.to(self.device)
        slots = self.slot_of[indices.clamp(0, n - 1)]
        inside = (indices >= 0) & (indices < n)
        return torch.where(inside, slots, torch.full_like(slots, self.size))

    def add(self, indices: Tensor, **values: Tensor) -> None:
        """Store ``values[name][i]`` (first dimension = batch) for the chosen samples of a batch.

        Buffers are float32, or float64 for float64 values; each is allocated on first use."""
        slots = self.slots(indices)
        self.counts.index_copy_(0, slots, torch.ones_like(slots, dtype=self.counts.dtype))
        for name, value in values.items():
            buf = self.values.get(name)
            if buf is None:
                dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
                buf = torch.zeros((self.size + 1, *value.shape[1:]), dtype=dtype, device=self.device)
                self.values[name] = buf
            buf.index_copy_(0, slots, value.detach().to(buf.dtype))

    def allocate(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> None:
        """Allocate a buffer before the first batch (so every process holds it, even one without batches)."""
        if name not in self.values:
            self.values[name] = torch.zeros((self.size + 1, *shape), dtype=dtype, device=self.device)

    def accumulators(self, prefix: str = "") -> dict[str, Tensor]:
        out = {f"{prefix}counts": self.counts}
        out.update({f"{prefix}{name}": buf for name, buf in self.values.items()})
        return out

    def collect(self) -> tuple[Tensor, dict[str, Tensor]]:
        """(sample indices on the CPU, values on the buffer's device) of the filled slots, by sample index."""
        counts = self.counts[: self.size]
        filled = (counts > 0).cpu()
        index = self.chosen[filled]
        order = torch.argsort(index)
        keep = torch.nonzero(filled).squeeze(1)[order].to(self.device)
        out = {}
        for name, buf in self.values.items():
            kept = buf.index_select(0, keep)
            out[name] = kept / counts.index_select(0, keep).reshape(-1, *([1] * (kept.dim() - 1)))
        return index[order], out


def fit_line(u: Tensor, v: Tensor) -> dict[str, float]:
    """OLS fit ``v = slope * u + intercept``, Pearson r and n, in float64; NaN when n < 2 or var(u) = 0."""
    u = u.double().flatten()
    v = v.double().flatten()
    n = u.numel()
    nan = {"slope": math.nan, "intercept": math.nan, "r": math.nan, "n": float(n)}
    if n < 2:
        return nan
    du, dv = u - u.mean(), v - v.mean()
    suu, svv, suv = (du * du).sum().item(), (dv * dv).sum().item(), (du * dv).sum().item()
    if suu <= 0:
        return nan
    slope = suv / suu
    r = suv / math.sqrt(suu * svv) if svv > 0 else math.nan
    return {"slope": slope, "intercept": v.mean().item() - slope * u.mean().item(), "r": r, "n": float(n)}


def role_shapes(ctx: Any, role: str) -> tuple[list[tuple[int, ...]] | None, list[tuple[int, ...]] | None]:
    """Per-sample shapes of a role's features (student, teacher) if the context carries dry-run shapes.

    ``MetricContext`` does not carry them yet (``student_shapes`` / ``teacher_shapes``, as in
    ``SetupContext``, are requested); without them, buffers are allocated at the first batch.
    """
    student = getattr(ctx, "student_shapes", None) or {}
    teacher = getattr(ctx, "teacher_shapes", None) or {}
    return student.get(role), teacher.get(role)
