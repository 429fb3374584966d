"""Contrastive Representation Distillation (Tian et al., ICLR 2020)."""

from __future__ import annotations

import math
import warnings
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

import kdhub
from kdhub_methods._crd_memory import ContrastMemory, negative_pool_size
from kdhub_methods._feature_common import role_shapes

NCE_EPS = 1e-7  # RepDistiller's eps in ContrastLoss


class Embed(nn.Module):
    """RepDistiller's ``Embed``: flatten, linear to ``dim_out``, L2-normalise."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)).float(), dim=1, eps=1e-12)


def nce_per_sample(probs: Tensor, num_data: int) -> Tensor:
    """RepDistiller's ``ContrastLoss`` (the paper's Eq. 18) per anchor: ``[B]``.

    ``probs[:, 0]`` is the positive's ``P``, ``probs[:, 1:]`` the K negatives'; with noise
    ``c = K / N``: ``-log(P_0 / (P_0 + c)) - sum_k log(c / (P_k + c))`` (eps 1e-7 in the denominators).
    """
    k = probs.shape[1] - 1
    c = k / num_data
    pos = probs[:, 0]
    neg = probs[:, 1:]
    log_d1 = torch.log(pos / (pos + c + NCE_EPS))
    log_d0 = torch.log(c / (neg + c + NCE_EPS))
    return -(log_d1 + log_d0.sum(dim=1))


class CRD(kdhub.Method):
    """Contrastive representation distillation: tell each sample's teacher embedding from other samples'.

    Paper: Y. Tian, D. Krishnan, P. Isola, "Contrastive Representation Distillation", ICLR 2020;
    reference code RepDistiller (``crd/criterion.py``, ``crd/memory.py``), also in mdistiller.

    The ``pooled`` features of both models are embedded by ``g(f) = normalise(W f + b)`` to
    ``feat_dim`` (one linear map per side, trained with the student). Two memory banks ``M_s, M_t``
    (N x feat_dim, N = training-set size, rows indexed by ``out.indices``) hold momentum averages of
    the embeddings. For sample i with K negatives ``j_1..j_K`` and ``P(v, m) = exp(<v, m> / tau) / Z``:

        l_i = h(g_s(f_s,i), M_t) + h(g_t(f_t,i), M_s)
        h(v, M) = -log(P_0 / (P_0 + K/N)) - sum_k log((K/N) / (P_k + K/N)),  P_0 = P(v, M[i]), P_k = P(v, M[j_k])

    ``Z = N * mean(exp(s / tau))`` is fixed from the first batch (one per bank, kept in checkpoints).
    After scoring, ``M[i] <- normalise(momentum * M[i] + (1 - momentum) * g(f_i))`` without gradient.
    The banks and Z are buffers, so they are part of every checkpoint.

    kdhub's reading:

    - Per sample: the banks carry no gradient and Z is a detached constant, so ``l_i`` depends on
      sample i's features only; a policy's class mask drops stopped samples exactly (``per_sample``).
      The banks are still updated with every sample of the batch (they are a running record of the
      embeddings, not a teaching signal).
    - Negatives: ``other_classes`` (default) draws K samples of other classes without replacement,
      which is what RepDistiller and mdistiller actually train with (``mode: exact`` of their CIFAR
      sample data set); ``uniform`` draws K samples other than i (the memory's own fallback).
      They are drawn on the device with torch's global RNG, so the run's seed fixes them.
    - Small data sets: K is clamped to the smallest pool of candidate negatives (N - 1 for
      ``uniform``, N minus the largest class for ``other_classes``), with a warning at setup: on
      ``digits`` (~1,700 training samples) 16384 negatives become every eligible sample once.
    - Under distributed training each process updates its copy of the banks with its own batch.

    Reference recipe (CIFAR-100, RepDistiller / mdistiller): CE weight 1, CRD weight 0.8, feat_dim
    128, 16384 negatives, tau 0.07, momentum 0.5::

        ce_weight: 1.0
        methods:
          - name: crd
            weight: 0.8
            options: {feat_dim: 128, num_negatives: 16384, nce_temperature: 0.07, momentum: 0.5}
    """

    name = "crd"
    feature_roles = ("pooled",)
    default_weight: ClassVar[float] = 0.8
    paper: ClassVar[str] = "Tian et al. 2020"

    class Options(kdhub.Options):
        feat_dim: int = Field(128, ge=1, le=65536, description="dimension of the embedding and of the memory banks")
        num_negatives: int = Field(
            16384,
            ge=1,
            le=10_000_000,
            description="negatives K per anchor (clamped to the pool size of small data sets)",
        )
        nce_temperature: kdhub.FiniteFloat = Field(
            0.07, ge=1e-3, le=10, description="temperature tau of the NCE scores"
        )
        momentum: kdhub.FiniteFloat = Field(0.5, ge=0, lt=1, description="momentum of the memory-bank update")
        negatives: Literal["other_classes", "uniform"] = Field(
            "other_classes",
            description="other_classes: negatives from other classes (RepDistiller's mode exact); "
            "uniform: any sample but the anchor",
        )
        replacement: bool = Field(
            False, description="draw negatives with replacement (cheaper for very large training sets)"
        )

    options: Options

    def setup(self, ctx: kdhub.SetupContext) -> None:
        s_shapes, t_shapes = role_shapes(ctx, "pooled", self.name)
        labels = ctx.train_labels.reshape(-1)
        if labels.numel() != ctx.num_train:
            raise kdhub.IncompatibleError(
                f"method 'crd': train_labels has {labels.numel()} entries but the training set has {ctx.num_train}"
            )
        opts = self.options
        pool = negative_pool_size(labels, opts.negatives)
        if pool < 1:
            raise kdhub.IncompatibleError(
                f"method 'crd' with negatives={opts.negatives!r} finds no negative sample "
                f"(training set of {ctx.num_train} samples, {int(labels.unique().numel())} classes)"
            )
        k = opts.num_negatives
        if k > pool:
            warnings.warn(
                f"crd: {k} negatives requested but a sample has only {pool} candidates "
                f"(N = {ctx.num_train}, negatives = {opts.negatives}); using K = {pool}",
                stacklevel=2,
            )
            k = pool
        self.embed_s = Embed(math.prod(s_shapes[-1]), opts.feat_dim)
        self.embed_t = Embed(math.prod(t_shapes[-1]), opts.feat_dim)
        self.memory = ContrastMemory(
            opts.feat_dim,
            labels.to(ctx.device),
            ctx.num_classes,
            k,
            opts.nce_temperature,
            opts.momentum,
            opts.negatives,
            opts.replacement,
        )
        self.to(ctx.device)

    def loss(self, out: kdhub.StepOutputs) -> Tensor:
        memory = self.memory
        v_s = self.embed_s(out.student_features["pooled"][-1])
        v_t = self.embed_t(out.teacher_features["pooled"][-1])
        if not self.training:
            return self._held_out_loss(v_s, v_t, out.labels)
        index = out.indices
        idx = torch.cat([index[:, None], memory.sample(index, memory.labels[index])], dim=1)
        p_s = memory.probabilities(memory.scores(memory.memory_t, v_s, idx), memory.z_s)  # student anchors
        p_t = memory.probabilities(memory.scores(memory.memory_s, v_t, idx), memory.z_t)  # teacher anchors
        memory.update(index, v_s, v_t)
        return nce_per_sample(p_s, memory.num_data) + nce_per_sample(p_t, memory.num_data)

    def _held_out_loss(self, v_s: Tensor, v_t: Tensor, labels: Tensor) -> Tensor:
        """Eval mode (e.g. a validation split): the positive is the other view's embedding of the
        same sample, negatives come from the banks by label, and nothing is updated or stored."""
        memory = self.memory
        neg = memory.sample(None, labels)
        pos = (v_s.float() * v_t.float()).sum(dim=1, keepdim=True)
        s_s = torch.cat([pos, memory.scores(memory.memory_t, v_s, neg)], dim=1)
        s_t = torch.cat([pos, memory.scores(memory.memory_s, v_t, neg)], dim=1)
        p_s = memory.probabilities(s_s, memory.z_s, store=False)
        p_t = memory.probabilities(s_t, memory.z_t, store=False)
        return nce_per_sample(p_s, memory.num_data) + nce_per_sample(p_t, memory.num_data)
