"""Test helpers for kdhub and for plugin authors: a tiny tapped network and a method check.

from kdhub.testing import check_method
check_method(MyMethod())          # shapes, finiteness, gradients, class-mask semantics
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdhub.engine.features import FeatureTaps, dry_run_shapes
from kdhub.engine.losses import method_loss, split_terms
from kdhub.method import Method, SetupContext, StepOutputs

__all__ = [
    "TINY_TAPS",
    "MethodCheck",
    "TinyNet",
    "check_method",
    "forward_outputs",
    "init_losses",
    "setup_method",
    "test_batch",
]


class _Stage(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()  # not in place: its input is the pre-activation tap

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class TinyNet(nn.Module):
    """A 3-stage CNN with every standard feature role (for tests; ``width`` scales the channels)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.stem = _Stage(in_channels, width, 1)
        self.stage1 = _Stage(width, width, 1)
        self.stage2 = _Stage(width, 2 * width, 2)
        self.stage3 = _Stage(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


TINY_TAPS: dict[str, list[str]] = {
    "stem": ["stem"],
    "stages": ["stage1", "stage2", "stage3"],
    "preact_stages": ["stage1.relu:input", "stage2.relu:input", "stage3.relu:input"],
    "bn_before_relu": ["stage1.bn", "stage2.bn", "stage3.bn"],
    "pooled": ["flatten"],
    "classifier": ["fc"],
}


def test_batch() -> StepOutputs:
    """Reference batch TB (docs/reference-values.md): z_s = [[1,2,3],[0,0,0]], z_t = [[3,2,1],[1,0,-1]], y = [2,0]."""
    return StepOutputs(
        student_logits=torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]),
        teacher_logits=torch.tensor([[3.0, 2.0, 1.0], [1.0, 0.0, -1.0]]),
        labels=torch.tensor([2, 0]),
        indices=torch.tensor([0, 1]),
    )


test_batch.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def setup_method(
    method: Method,
    student: nn.Module,
    teacher: nn.Module | None,
    student_taps: dict[str, list[str]],
    teacher_taps: dict[str, list[str]],
    example: Tensor,
    num_classes: int,
    train_labels: Tensor | None = None,
    epochs: int = 10,
    steps_per_epoch: int = 10,
) -> SetupContext:
    """Dry-run both models, build the SetupContext and call ``method.setup`` (as the engine does)."""
    s_shapes, _ = dry_run_shapes(student, student_taps, example[:2])
    t_shapes = dry_run_shapes(teacher, teacher_taps, example[:2])[0] if teacher is not None else {}
    if train_labels is None:
        train_labels = torch.arange(64) % num_classes
    ctx = SetupContext(
        num_classes=num_classes,
        num_train=len(train_labels),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        student=student,
        teacher=teacher,
        student_taps=student_taps,
        teacher_taps=teacher_taps,
        student_shapes=s_shapes,
        teacher_shapes=t_shapes,
        train_labels=train_labels,
    )
    method.setup(ctx)
    return ctx


def forward_outputs(
    method: Method,
    student: nn.Module,
    teacher: nn.Module | None,
    student_taps: dict[str, list[str]],
    teacher_taps: dict[str, list[str]],
    images: Tensor,
    labels: Tensor,
    indices: Tensor | None = None,
    epoch: int = 1,
    class_mask: Tensor | None = None,
) -> StepOutputs:
    """One forward of both models with the method's feature roles tapped (teacher without grad)."""
    roles = method.feature_roles
    with FeatureTaps(student, student_taps, roles) as s_rec:
        s_logits = student(images)
        s_feats = s_rec.collect()
    t_logits, t_feats = None, {}
    if teacher is not None:
        with torch.no_grad(), FeatureTaps(teacher, teacher_taps, roles) as t_rec:
            t_logits = teacher(images)
            t_feats = t_rec.collect()
    if indices is None:
        indices = torch.arange(len(labels))
    return StepOutputs(s_logits, t_logits, labels, indices, epoch, 0, class_mask, s_feats, t_feats)


@dataclass
class MethodCheck:
    loss: Tensor
    terms: dict[str, Tensor]
    outputs: StepOutputs


def check_method(
    method: Method,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    student_taps: dict[str, list[str]] | None = None,
    teacher_taps: dict[str, list[str]] | None = None,
    num_classes: int = 10,
    batch_size: int = 8,
    image_size: int = 16,
    epoch: int = 1,
    seed: int = 0,
) -> MethodCheck:
    """Check the contract of a method on real networks (TinyNet by default).

    - ``setup`` succeeds from dry-run shapes and ``loss`` has shape ``[B]`` (per-sample) or ``[]``;
    - every term is finite and the total loss back-propagates into the student;
    - masking class 0 gives zero gradient to the student logits and features of its samples.
    """
    torch.manual_seed(seed)
    student = student if student is not None else TinyNet(num_classes, width=8)
    if teacher is None and method.needs_teacher:
        teacher = TinyNet(num_classes, width=16).eval()
    student_taps = student_taps if student_taps is not None else TINY_TAPS
    teacher_taps = teacher_taps if teacher_taps is not None else TINY_TAPS
    images = torch.randn(batch_size, 3, image_size, image_size)
    labels = torch.arange(batch_size) % num_classes
    setup_method(method, student, teacher, student_taps, teacher_taps, images, num_classes, epochs=10)
    method.train()
    out = forward_outputs(method, student, teacher, student_taps, teacher_taps, images, labels, epoch=epoch)
    raw = split_terms(method.loss(out))
    for key, value in raw.items():
        expected = (batch_size,) if method.per_sample else ()
        assert tuple(value.shape) == expected, (
            f"{method.name} term {key!r}: shape {tuple(value.shape)}, want {expected}"
        )
        assert torch.isfinite(value).all(), f"{method.name} term {key!r} is not finite"
    terms = method_loss(method, out)
    loss = torch.stack(list(terms.values())).sum()
    student.zero_grad()
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    if method.feature_roles or method.output_based or method.needs_teacher:
        assert any(g.abs().sum() > 0 for g in grads), f"{method.name}: no gradient reaches the student"
    _check_class_mask(method, out, num_classes)
    return MethodCheck(loss.detach(), {k: v.detach() for k, v in terms.items()}, out)


def _check_class_mask(method: Method, out: StepOutputs, num_classes: int) -> None:
    leaves_logits = out.student_logits.detach().requires_grad_(True)
    leaves_feats = {k: [t.detach().requires_grad_(True) for t in v] for k, v in out.student_features.items()}
    mask = torch.ones(num_classes, dtype=torch.bool)
    mask[0] = False
    masked = StepOutputs(
        leaves_logits,
        out.teacher_logits,
        out.labels,
        out.indices,
        out.epoch,
        out.step,
        mask,
        leaves_feats,
        out.teacher_features,
    )
    loss = torch.stack(list(method_loss(method, masked).values())).sum()
    inputs = [leaves_logits] + [t for v in leaves_feats.values() for t in v]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    dropped = out.labels == 0
    for tensor, grad in zip(inputs, grads, strict=True):
        if grad is None or tensor.dim() == 0:
            continue
        assert grad[dropped].abs().max() == 0, f"{method.name}: masked class 0 still has gradient"


def init_losses(
    method: Method,
    student: nn.Module,
    teacher: nn.Module | None,
    images: Tensor,
    labels: Tensor,
    optimizer: torch.optim.Optimizer,
    steps: int = 15,
    taps: dict[str, list[str]] | None = None,
) -> list[float]:
    """Train ``method.init_loss`` for ``steps`` steps on one batch (as the engine's init stage does); the losses."""
    taps = taps if taps is not None else TINY_TAPS
    losses = []
    for _ in range(steps):
        loss = method.init_loss(forward_outputs(method, student, teacher, taps, taps, images, labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
