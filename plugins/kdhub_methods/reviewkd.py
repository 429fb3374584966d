"""Distilling Knowledge via Knowledge Review (Chen et al., CVPR 2021)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

import kdhub
from kdhub_methods._feature_common import MaskedBatchNorm2d, require_maps, role_shapes, taught_weight

HCL_LEVELS = (4, 2, 1)  # the pyramid of the paper's hierarchical context loss


def hcl_per_sample(student: Tensor, teacher: Tensor, levels: tuple[int, ...] = HCL_LEVELS) -> Tensor:
    """Hierarchical context loss of one level, per sample: ``[B]``.

    ``(mse + sum_l w_l mse(pool_l(s), pool_l(t))) / (1 + sum_l w_l)`` over the pooling sizes
    ``l < H`` of ``levels``, with ``w`` halving from 1/2 at each size used; ``mse`` is the mean over
    ``(C, H, W)``, so its batch mean is the reference's ``F.mse_loss(reduction="mean")``.
    """
    s, t = student.float(), teacher.float()
    height = s.shape[2]
    loss = (s - t).square().flatten(1).mean(dim=1)
    weight, total = 1.0, 1.0
    for size in levels:
        if size >= height:
            continue
        weight /= 2.0
        pooled = F.adaptive_avg_pool2d(s, size) - F.adaptive_avg_pool2d(t, size)
        loss = loss + pooled.square().flatten(1).mean(dim=1) * weight
        total += weight
    return loss / total


class ABF(nn.Module):
    """Attention-based fusion: a 1x1 conv of the student level, fused with the deeper level's
    residual by two sigmoid attention maps, then a 3x3 conv to the teacher's channels."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.bn1 = MaskedBatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = MaskedBatchNorm2d(out_channels)
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1.weight, a=1)
        nn.init.kaiming_uniform_(self.conv2.weight, a=1)

    def forward(
        self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int], weight: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        x = self.bn1(self.conv1(x), weight)
        if self.att_conv is not None and residual is not None:
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        if tuple(x.shape[-2:]) != out_size:
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.bn2(self.conv2(x), weight), x


class ReviewKD(kdhub.Method):
    """Knowledge review: fuse the student's levels from deep to shallow (ABF) and match every teacher level (HCL).

    Paper: P. Chen, S. Liu, H. Zhao, J. Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021;
    reference code dvlab-research/ReviewKD and mdistiller's ``ReviewKD.py``.

    Levels are the ``stages`` plus the ``pooled`` vector (as a 1x1 map) of the student, against the
    teacher's ``preact_stages`` (``stages`` with ``teacher_preact: false``) plus its ``pooled`` vector;
    the last levels are paired when the counts differ. From the deepest level ``n`` down,
    ``(Y_k, R_k) = ABF_k(X_k, R_{k+1})`` (``ABF_n`` has no residual); per sample:

        l_i = min(epoch / warmup_epochs, 1) * sum_k HCL(Y_k,i, T_k,i)
        HCL(y, t) = (mse(y, t) + sum_{l in 4,2,1; l < H} w_l mse(pool_l(y), pool_l(t))) / (1 + sum w_l)

    with ``w = 1/2, 1/4, 1/8`` for the sizes used in turn.

    Channels and sizes come from the dry run: ABF_k maps the student's channels of level k to the
    teacher's, through ``min(max_mid_channels, C_s of the pooled level)`` channels, and resizes
    (nearest) to the teacher's spatial size, so any pair of CNNs works without per-pair tables.

    kdhub's reading: epochs count from 1, so the first epoch has factor ``1 / warmup_epochs`` as in
    mdistiller (the official code starts at 0). The student levels are post-ReLU and the teacher's
    pre-ReLU, as in both reference codes. The ABF BatchNorms take their batch statistics from the
    taught samples only, so a stopped class gets no gradient.

    Reference recipe (CIFAR-100): CE weight 1, 20 warm-up epochs; the loss weight is 1.0 in
    mdistiller's defaults but 5.0 in both codes' CIFAR scripts for resnet32x4 -> resnet8x4 (the
    official script also uses 0.6 for resnet56 -> resnet20, 1.0 for resnet110 -> resnet32 and 8.0 for
    resnet32x4 -> ShuffleV2)::

        ce_weight: 1.0
        methods:
          - name: reviewkd
            weight: 5.0
            options: {warmup_epochs: 20}
    """

    name = "reviewkd"
    default_weight: ClassVar[float] = 1.0
    paper: ClassVar[str] = "Chen et al. 2021"

    class Options(kdhub.Options):
        warmup_epochs: int = Field(20, ge=0, le=100_000, description="epochs of linear warm-up of the loss (0 = none)")
        teacher_preact: bool = Field(
            True, description="match the teacher's pre-ReLU stages (true, as the reference codes) or its stages"
        )
        max_mid_channels: int = Field(512, ge=1, le=65536, description="upper bound of the ABF's hidden channels")

    options: Options

    @property
    def feature_roles(self) -> tuple[str, ...]:  # type: ignore[override]  # a capability an option decides
        # the post-ReLU-only variant must not demand pre-ReLU taps of the models
        return ("stages", "preact_stages", "pooled") if self.options.teacher_preact else ("stages", "pooled")

    @property
    def teacher_role(self) -> str:
        return "preact_stages" if self.options.teacher_preact else "stages"

    def warmup_factor(self, epoch: int) -> float:
        warmup = self.options.warmup_epochs
        return 1.0 if warmup == 0 else min(epoch / warmup, 1.0)

    def setup(self, ctx: kdhub.SetupContext) -> None:
        s_stages, _ = role_shapes(ctx, "stages", self.name)
        _, t_stages = role_shapes(ctx, self.teacher_role, self.name)
        s_pooled, t_pooled = role_shapes(ctx, "pooled", self.name)
        for shape in s_stages:
            require_maps(shape, self.name, "stages", "student")
        for shape in t_stages:
            require_maps(shape, self.name, self.teacher_role, "teacher")
        s_levels = [*s_stages, (math.prod(s_pooled[-1]), 1, 1)]
        t_levels = [*t_stages, (math.prod(t_pooled[-1]), 1, 1)]
        n = min(len(s_levels), len(t_levels))
        s_levels, t_levels = s_levels[-n:], t_levels[-n:]
        mid = min(self.options.max_mid_channels, s_levels[-1][0])
        self.num_levels = n
        self.out_sizes = [(t[1], t[2]) for t in t_levels]
        self.abfs = nn.ModuleList(
            ABF(s[0], mid, t[0], fuse=k < n - 1) for k, (s, t) in enumerate(zip(s_levels, t_levels, strict=True))
        )
        self.to(ctx.device)

    def loss(self, out: kdhub.StepOutputs) -> Tensor:
        n = self.num_levels
        s_pooled = out.student_features["pooled"][-1]
        t_pooled = out.teacher_features["pooled"][-1]
        xs = [*out.student_features["stages"], s_pooled.reshape(s_pooled.shape[0], -1, 1, 1)][-n:]
        ts = [*out.teacher_features[self.teacher_role], t_pooled.reshape(t_pooled.shape[0], -1, 1, 1)][-n:]
        weight = taught_weight(out)
        residual: Tensor | None = None
        total: Tensor | int = 0
        for k in reversed(range(n)):
            y, residual = self.abfs[k](xs[k], residual, self.out_sizes[k], weight)
            total = total + hcl_per_sample(y, ts[k].detach())
        return total * self.warmup_factor(out.epoch)  # type: ignore[return-value]
