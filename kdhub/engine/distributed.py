"""torchrun / DistributedDataParallel support: rank bookkeeping and sums across processes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistEnv", "init_distributed"]


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_(self, tensors: list[Tensor]) -> None:
        """Sum tensors across processes in place (no-op on one process)."""
        if not self.enabled:
            return
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def gather(self, obj: Any) -> list[Any] | None:
        """Every process's ``obj`` (picklable, tensors on the CPU), in rank order, on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average gradients across processes (for trainable parts outside the DDP-wrapped student)."""
        if not self.enabled:
            return
        for param in params:
            if param.grad is not None:
                dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
                param.grad.div_(self.world_size)


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group that torchrun describes in the environment (one process: nothing)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))
