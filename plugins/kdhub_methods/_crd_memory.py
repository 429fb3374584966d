"""CRD's memory banks and negative sampling (private to ``crd.py``; not scanned for plugins).

Two banks of N x d unit vectors, one per view (student, teacher), indexed by the position of a
sample in the training set. Negatives are drawn on the device with torch's global RNG, so the
engine's seeding makes them reproducible; nothing here synchronises with the host.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Negatives = Literal["other_classes", "uniform"]


def negative_pool_size(labels: Tensor, negatives: Negatives) -> int:
    """The smallest number of candidate negatives any sample has (for clamping K; setup time only)."""
    n = int(labels.numel())
    if negatives == "uniform":
        return n - 1
    return n - int(torch.bincount(labels).max())


class ContrastMemory(nn.Module):
    """Momentum memory banks of the student and teacher embeddings, with RepDistiller's NCE scores.

    - ``memory_s`` / ``memory_t`` (buffers, in checkpoints): initialised uniform in
      ``[-sqrt(3/d), sqrt(3/d)]`` as RepDistiller does, then ``m[i] <- normalise(mu m[i] + (1 - mu) v_i)``.
    - ``z_s`` / ``z_t`` (buffers): the NCE normalisation constants ``Z = N * mean(exp(s / tau))``, set
      from the first batch and kept (RepDistiller's ``params[2:4]``); ``-1`` means "not set yet".
    - ``sample(index, labels)``: ``[B, K]`` negative rows. ``other_classes``: K samples of other
      classes (RepDistiller's default ``mode: exact``); ``uniform``: K samples other than the anchor.
      Without replacement by default, as RepDistiller's data set draws them; ``replacement`` is
      cheaper for very large N.
    """

    memory_s: Tensor
    memory_t: Tensor
    z_s: Tensor
    z_t: Tensor
    labels: Tensor
    order: Tensor
    class_count: Tensor
    class_start: Tensor

    def __init__(
        self,
        dim: int,
        labels: Tensor,
        num_classes: int,
        num_negatives: int,
        temperature: float,
        momentum: float,
        negatives: Negatives = "other_classes",
        replacement: bool = False,
    ) -> None:
        super().__init__()
        n = int(labels.numel())
        self.num_data = n
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.momentum = momentum
        self.negatives = negatives
        self.replacement = replacement
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(n, dim, device=labels.device).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("memory_t", torch.rand(n, dim, device=labels.device).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("z_s", torch.tensor(-1.0, device=labels.device))
        self.register_buffer("z_t", torch.tensor(-1.0, device=labels.device))
        labels = labels.long()
        self.register_buffer("labels", labels, persistent=False)
        # samples sorted by class, with each class's first position and size: lets the with-replacement
        # sampler skip the anchor's class by index arithmetic alone
        counts = torch.bincount(labels, minlength=num_classes)
        self.register_buffer("order", torch.argsort(labels, stable=True), persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        # scores from one [B, N] product are cheaper than gathering [B, K + 1, d] rows unless N is huge
        self.full_product = n <= (num_negatives + 1) * dim

    def sample(self, index: Tensor | None, labels: Tensor) -> Tensor:
        """``[B, K]`` bank rows to use as negatives.

        ``index``: the anchors' own rows (excluded by ``uniform``), or None for samples outside the
        training set (held-out evaluation), which may draw any row. ``labels``: the anchors' classes.
        """
        b, k, n = labels.shape[0], self.num_negatives, self.num_data
        device = labels.device
        if self.replacement:
            if self.negatives == "other_classes":
                start, count = self.class_start[labels][:, None], self.class_count[labels][:, None]
                pool = n - count
                draw = (torch.rand(b, k, device=device) * pool).long().clamp_(max=pool - 1)
                return self.order[draw + (draw >= start).long() * count]  # skip the anchor's class block
            if index is None:
                return torch.randint(0, n, (b, k), device=device)
            draw = torch.randint(0, n - 1, (b, k), device=device)
            return draw + (draw >= index[:, None]).long()  # skip the sample itself
        if self.negatives == "other_classes":
            weight = (self.labels[None, :] != labels[:, None]).float()
        else:
            weight = torch.ones(b, n, device=device)
            if index is not None:
                weight.scatter_(1, index[:, None], 0.0)
        # torch.multinomial(weight, k, replacement=False) draws exactly this (exponential keys, top k),
        # but first checks the weights with a .item(): a host sync every step on CUDA
        keys = torch.empty_like(weight).exponential_(1)
        return torch.div(weight, keys, out=keys).topk(k, dim=1).indices

    def scores(self, bank: Tensor, v: Tensor, idx: Tensor) -> Tensor:
        """Dot products ``<bank[idx[i, j]], v_i>``: ``[B, J]`` (the bank carries no gradient)."""
        v = v.float()
        if self.full_product:
            return (v @ bank.t()).gather(1, idx)
        rows = bank.index_select(0, idx.reshape(-1)).view(idx.shape[0], idx.shape[1], -1)
        return torch.bmm(rows, v.unsqueeze(2)).squeeze(2)

    def probabilities(self, scores: Tensor, z: Tensor, store: bool = True) -> Tensor:
        """``exp(s / tau) / Z``; an unset ``Z`` is estimated (detached) from this batch, and kept if ``store``."""
        out = torch.exp(scores / self.temperature)
        value = torch.where(z < 0, out.detach().mean() * self.num_data, z)
        if store:
            z.copy_(value)
        return out / value

    @torch.no_grad()
    def update(self, index: Tensor, v_s: Tensor, v_t: Tensor) -> None:
        """Momentum update of the rows ``index`` of both banks, renormalised to unit length.

        Out of place: the scores of this step saved the old banks for their backward pass (a device
        copy of N x d per bank and step, far less than RepDistiller's gathered B x (K + 1) x d rows).
        """
        mu = self.momentum
        for name, v in (("memory_s", v_s), ("memory_t", v_t)):
            bank = getattr(self, name)
            rows = bank.index_select(0, index).mul_(mu).add_(v.detach().float(), alpha=1 - mu)
            setattr(self, name, bank.index_copy(0, index, F.normalize(rows, dim=1, eps=1e-12)))
