"""Shared pieces of the feature-based methods (private module: not scanned for plugins).

- reading per-sample feature shapes from the dry run and choosing stages, with clear errors;
- matching spatial sizes the way RepDistiller does (average-pool the larger map);
- a BatchNorm whose batch statistics come from the taught samples only, so that a trainable
  regressor with BatchNorm (FitNet, AB, FT) keeps the class-mask contract: a sample of a stopped
  class gets no gradient through the statistics of the others;
- ``full_precision``: autocast off for Gram matrices and distances (SP, PKT, NST, FSP, RKD, CC).

Other method modules (crd, ofd, reviewkd, srrl) import from here too: keep these names stable.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Annotated, TypeVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

import kdhub

Shape = tuple[int, ...]
StageIndex = Annotated[int, Field(ge=-64, le=63)]
"""An index into a model's list of stages (negative counts from the end)."""
Stages = tuple[StageIndex, ...]
_F = TypeVar("_F", bound=Callable[..., Tensor])


def full_precision(fn: _F) -> _F:
    """Run ``fn`` with autocast off: Gram matrices and distances lose too much in bf16.

    The device type is taken from the first tensor argument (callers pass float32 tensors).
    """

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> Tensor:
        device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def role_shapes(ctx: kdhub.SetupContext, role: str, who: str) -> tuple[list[Shape], list[Shape]]:
    """Per-sample shapes of ``role`` on the student and the teacher side (IncompatibleError if missing)."""
    for side, shapes in (("student", ctx.student_shapes), ("teacher", ctx.teacher_shapes)):
        if not shapes.get(role):
            have = ", ".join(sorted(shapes)) or "none"
            raise kdhub.IncompatibleError(
                f"method {who!r} needs {role!r} features, which the {side} model does not provide (it provides: {have})"
            )
    return list(ctx.student_shapes[role]), list(ctx.teacher_shapes[role])


def resolve_stages(
    n_student: int, n_teacher: int, stages: Sequence[int] | None, who: str, role: str = "stages"
) -> list[int]:
    """Stage indices valid on both sides; ``None`` means all of them (equal counts required).

    Indices are used as Python indices on each side, so negative ones count from the end of each
    model separately, which aligns the last stages of models with different depths.
    """
    if stages is None:
        if n_student != n_teacher:
            raise kdhub.IncompatibleError(
                f"method {who!r}: the student has {n_student} {role!r} features and the teacher {n_teacher}; "
                f"choose the pairs with the option `stages` (negative indices count from the end, "
                f"e.g. [-2, -1])"
            )
        return list(range(n_student))
    for index in stages:
        for side, n in (("student", n_student), ("teacher", n_teacher)):
            if not -n <= index < n:
                raise kdhub.IncompatibleError(
                    f"method {who!r}: stage index {index} is out of range for the {side} model ({n} {role!r} features)"
                )
    return list(stages)


def require_maps(shape: Shape, who: str, role: str, side: str) -> None:
    """Raise unless ``shape`` is a per-sample conv feature map ``(C, H, W)``."""
    if len(shape) != 3:
        raise kdhub.IncompatibleError(
            f"method {who!r} needs convolutional {role!r} features (C, H, W); the {side} model gives {shape}"
        )


def require_vectors(shape: Shape, who: str, role: str, side: str) -> None:
    if len(shape) != 1:
        raise kdhub.IncompatibleError(
            f"method {who!r} needs {role!r} features of shape (D,); the {side} model gives {shape}"
        )


def match_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two feature maps to the other's spatial size (RepDistiller's rule)."""
    hs, ws = f_s.shape[-2:]
    ht, wt = f_t.shape[-2:]
    if (hs, ws) == (ht, wt):
        return f_s, f_t
    if hs * ws > ht * wt:
        return F.adaptive_avg_pool2d(f_s, (ht, wt)), f_t
    return f_s, F.adaptive_avg_pool2d(f_t, (hs, ws))


def taught_weight(out: kdhub.StepOutputs) -> Tensor | None:
    """``1.0`` for taught samples and ``0.0`` for the others, or None when every class is taught."""
    taught = out.taught()
    return None if taught is None else taught.to(out.student_logits.dtype)


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are taken over the samples with weight 1 only.

    Without a weight (or in eval mode) it is exactly ``nn.BatchNorm2d``. With a 0/1 weight per
    sample the batch mean and variance (and the running statistics) ignore the weight-0 samples,
    so they get no gradient through the normalisation of the others; running statistics are left
    unchanged when fewer than two samples count.
    """

    def forward(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        if weight is None or not self.training:
            return super().forward(x)
        x = x.float()  # statistics in float32, as batch_norm runs under autocast
        w = weight.to(x.dtype).view(-1, 1, 1, 1)
        count = w.sum() * (x.shape[2] * x.shape[3])
        denom = count.clamp(min=1.0)
        mean = (x * w).sum(dim=(0, 2, 3)) / denom
        centred = x - mean.view(1, -1, 1, 1)
        var = (centred.square() * w).sum(dim=(0, 2, 3)) / denom
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        tracked = self.num_batches_tracked
        if (
            self.track_running_stats
            and self.running_mean is not None
            and self.running_var is not None
            and tracked is not None
        ):
            with torch.no_grad():
                tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / tracked.float()
                enough = count > 1
                unbiased = var * count / (count - 1).clamp(min=1.0)
                self.running_mean.copy_(
                    torch.where(enough, torch.lerp(self.running_mean, mean, momentum), self.running_mean)
                )
                self.running_var.copy_(
                    torch.where(enough, torch.lerp(self.running_var, unbiased, momentum), self.running_var)
                )
        return y


class ConvReg(nn.Module):
    """RepDistiller's convolutional regressor from a student map ``(C_s, H_s, W_s)`` to ``(C_t, H_t, W_t)``.

    ``H_s = 2 H_t``: 3x3 conv with stride 2; ``2 H_s = H_t``: 4x4 transposed conv with stride 2;
    ``H_s >= H_t``: conv with kernel ``(1 + H_s - H_t, 1 + W_s - W_t)``; then BatchNorm (masked, see
    :class:`MaskedBatchNorm2d`) and, with ``relu``, a ReLU. Other sizes raise IncompatibleError.
    """

    def __init__(self, s_shape: Shape, t_shape: Shape, relu: bool = True, who: str = "") -> None:
        super().__init__()
        s_c, s_h, s_w = s_shape
        t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h and s_w == 2 * t_w:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h and 2 * s_w == t_w:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise kdhub.IncompatibleError(
                f"method {who!r}: no regressor maps a student feature of size {s_h}x{s_w} to a teacher feature "
                f"of size {t_h}x{t_w} (supported: equal, half, double, or a larger student map)"
            )
        self.bn = MaskedBatchNorm2d(t_c)
        self.relu = relu

    def forward(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        x = self.bn(self.conv(x), weight)
        return F.relu(x) if self.relu else x
