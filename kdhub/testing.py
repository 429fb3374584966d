"""Test helpers for kdhub and for plugin authors: a tiny tapped network, a method check and a metric check.

from kdhub.testing import check_method, check_metric
check_method(MyMethod())                    # shapes, finiteness, gradients, class-mask semantics
check_metric(lambda: MyMetric())            # batching, all-reduce and empty-process invariance, via the engine
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from kdhub.contract.dataset import DataBundle, TensorSplit
from kdhub.contract.hookspecs import REGISTER_HOOKS, hookimpl
from kdhub.contract.method import Method, SetupContext, StepOutputs
from kdhub.contract.metric import Metric, MetricContext, MetricResult
from kdhub.engine.data import DeviceData
from kdhub.engine.distributed import DistEnv
from kdhub.engine.evaluate import Evaluator, Tally
from kdhub.engine.features import FeatureTaps, dry_run_shapes
from kdhub.engine.losses import method_loss, terms_of
from kdhub.registry import loading as plugins

__all__ = [
    "TINY_TAPS",
    "MethodCheck",
    "TinyNet",
    "check_method",
    "check_metric",
    "evaluate_metric",
    "forward_outputs",
    "init_losses",
    "interrupt_after",
    "registered",
    "same_results",
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
    return StepOutputs(
        student_logits=s_logits,
        teacher_logits=cast(Tensor, t_logits),  # None without a teacher
        labels=labels,
        indices=indices,
        epoch=epoch,
        step=0,
        class_mask=class_mask,
        student_features=s_feats,
        teacher_features=t_feats,
    )


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
    for key, value in terms_of(method, out).items():  # the engine's own shape check
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
        student_logits=leaves_logits,
        teacher_logits=out.teacher_logits,
        labels=out.labels,
        indices=out.indices,
        epoch=out.epoch,
        step=out.step,
        class_mask=mask,
        student_features=leaves_feats,
        teacher_features=out.teacher_features,
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


# metrics ------------------------------------------------------------------------------------------


def evaluate_metric(
    make: Callable[[], Metric],
    student: nn.Module,
    teacher: nn.Module | None,
    pixels: Tensor,
    labels: Tensor,
    *,
    batch_size: int,
    world_size: int = 1,
    split: str = "test",
    epoch: int = 1,
    taps: dict[str, list[str]] | None = None,
    num_classes: int | None = None,
    start: bool = True,
    mean: float = 0.5,
    std: float = 0.25,
) -> MetricResult:
    """Evaluate a fresh metric from ``make`` as the engine does, on ``world_size`` simulated processes.

    ``pixels`` (uint8 ``[N, C, H, W]``) and ``labels`` form the split; each simulated process has
    its own model copies (one process uses the models given), metric and
    :class:`~kdhub.engine.data.DeviceData` shard, and goes through the engine's
    :class:`~kdhub.engine.evaluate.Evaluator` (a process may get no batch). Every accumulator is
    then summed across the processes (the all-reduce) and the first one computes the result.
    """
    taps = taps if taps is not None else TINY_TAPS
    num_classes = num_classes if num_classes is not None else int(labels.max()) + 1
    channels = pixels.shape[1]
    split_data = TensorSplit(pixels, labels)
    bundle = DataBundle(
        train=split_data, test=split_data, num_classes=num_classes, mean=(mean,) * channels, std=(std,) * channels
    )
    example = ((pixels[:2].float() / 255 - mean) / std).to(torch.float32)
    tallies: list[Tally] = []
    metrics: list[Metric] = []
    for rank in range(world_size):
        s = copy.deepcopy(student) if world_size > 1 else student
        t = copy.deepcopy(teacher) if world_size > 1 and teacher is not None else teacher
        if t is not None:
            t.eval()
        data = DeviceData(bundle, torch.device("cpu"), val_fraction=0.0, seed=0, rank=rank, world_size=world_size)
        metric = make()
        ctx = MetricContext(
            num_classes=num_classes,
            split=split,
            epoch=epoch,
            device=torch.device("cpu"),
            class_names=[str(c) for c in range(num_classes)],
            student=s,
            teacher=t,
            num_samples=len(labels),
            batch_size=batch_size,
            seed=0,
            student_shapes=dry_run_shapes(s, taps, example)[0],
            teacher_shapes=dry_run_shapes(t, taps, example)[0] if t is not None else {},
        )
        if start:
            metric.start(ctx)
        evaluator = Evaluator(
            data=data,
            student=s,
            teacher=t,
            student_taps=taps,
            teacher_taps=taps,
            teaching=[],
            policy=None,
            dist=DistEnv(rank, world_size),
            device=torch.device("cpu"),
            batch_size=batch_size,
        )
        tallies.append(evaluator.accumulate("test", [metric], ctx))
        metrics.append(metric)
    accumulators = [m.accumulators() for m in metrics]
    for other in accumulators[1:]:
        if list(other) != list(accumulators[0]) or any(other[k].shape != accumulators[0][k].shape for k in other):
            raise AssertionError("processes hold different accumulators: the all-reduce would not match")
    for group in [[a[key] for a in accumulators] for key in accumulators[0]] + [
        list(ts) for ts in zip(*(t.tensors() for t in tallies), strict=True)
    ]:
        summed = torch.stack(group).sum(0)
        for tensor in group:
            tensor.copy_(summed)
    return Evaluator.finish(tallies[0], metrics[:1]).results[0]


def same_results(
    first: MetricResult, second: MetricResult, skip: Callable[[str], bool] = lambda key: False, rel: float = 1e-6
) -> None:
    """Assert equal scalars and tables (NaN equals NaN); ``skip`` names keys or columns to ignore."""
    assert set(first.scalars) == set(second.scalars), (sorted(first.scalars), sorted(second.scalars))
    for key, value in first.scalars.items():
        if not skip(key):
            _same(value, second.scalars[key], rel, key)
    assert set(first.tables) == set(second.tables)
    for name, table in first.tables.items():
        assert set(table) == set(second.tables[name]), name
        for column, values in table.items():
            if skip(column):
                continue
            other = second.tables[name][column]
            assert len(values) == len(other), (name, column)
            for x, y in zip(values, other, strict=True):
                _same(x, y, rel, f"{name}.{column}")


def _same(x: Any, y: Any, rel: float, where: str) -> None:
    if isinstance(x, float) and math.isnan(x):
        assert isinstance(y, float), (where, x, y)
        assert math.isnan(y), (where, x, y)
    elif isinstance(x, float):
        assert math.isclose(x, y, rel_tol=rel, abs_tol=1e-9), (where, x, y)
    else:
        assert x == y, (where, x, y)


def check_metric(
    make: Callable[[], Metric],
    *,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    taps: dict[str, list[str]] | None = None,
    num_classes: int = 10,
    num_samples: int = 40,
    image_size: int = 8,
    batch_sizes: tuple[int, ...] = (16, 7),
    world_sizes: tuple[int, ...] = (2, 3),
    batch_dependent: Callable[[str], bool] = lambda key: False,
    split: str = "test",
    seed: int = 0,
) -> MetricResult:
    """Check a metric through the engine's evaluation; returns its result on one process, one batch.

    - scalars are floats with plain names, tables have columns of equal length, figures render;
    - the result does not depend on the batch size nor on how many processes share the split,
      including a process that gets no batch (keys for which ``batch_dependent`` is true are only
      checked across processes at the same batch size);
    - a metric with ``needs_teacher`` gets a teacher (a wider TinyNet) unless one is given.
    """
    torch.manual_seed(seed)
    student = student if student is not None else TinyNet(num_classes, width=8)
    probe = make()
    if teacher is None and probe.needs_teacher:
        teacher = TinyNet(num_classes, width=16)
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (num_samples, 3, image_size, image_size), generator=generator, dtype=torch.uint8)
    labels = torch.arange(num_samples) % num_classes

    def evaluate(batch_size: int, world_size: int) -> MetricResult:
        return evaluate_metric(
            make,
            student,
            teacher,
            pixels,
            labels,
            batch_size=batch_size,
            world_size=world_size,
            taps=taps,
            num_classes=num_classes,
            split=split,
        )

    whole = evaluate(num_samples, 1)
    _check_shape(whole)
    for batch_size in batch_sizes:
        alone = evaluate(batch_size, 1)
        same_results(whole, alone, skip=batch_dependent)
        batches = math.ceil(num_samples / batch_size)
        for world_size in (*world_sizes, batches + 1):  # the last leaves a process without a batch
            same_results(alone, evaluate(batch_size, world_size))
    return whole


def _check_shape(result: MetricResult) -> None:
    for key, value in result.scalars.items():
        assert isinstance(value, float), f"scalar {key!r} is a {type(value).__name__}, not a float"
        assert "/" not in key, f"scalar {key!r}: names must not contain '/' (the engine adds split/metric/)"
    for name, table in result.tables.items():
        assert len({len(column) for column in table.values()}) <= 1, f"table {name!r} has columns of different lengths"
    for name, figure in result.figures.items():
        figure.savefig(io.BytesIO(), format="png")  # renders, or raises naming the problem
        assert hasattr(figure, "savefig"), name


# runs ---------------------------------------------------------------------------------------------


class _Interrupt:
    def __init__(self, epoch: int, error: BaseException) -> None:
        self.epoch, self.error = epoch, error

    @hookimpl
    def kdhub_epoch_ended(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        if epoch == self.epoch:
            raise self.error


@contextlib.contextmanager
def registered(plugin: Any, name: str | None = None) -> Iterator[None]:
    """Inside the block, ``plugin`` (an object or module with ``@kdhub.hookimpl`` functions) is a plugin:
    its lifecycle hooks are called and the classes its register hooks register can be used. Afterwards it
    is unregistered, and when it registered classes the registry is loaded again without them."""
    name = name or f"kdhub-testing-{id(plugin)}"
    registers = any(callable(getattr(plugin, hook, None)) for hook in REGISTER_HOOKS.values())
    plugins.register_module(plugin, name=name)
    try:
        yield
    finally:
        if registers:
            plugins.reset()  # registry entries outlive unregister(): the next lookup reloads the entry points
        else:
            plugins.unregister(name)


@contextlib.contextmanager
def interrupt_after(epoch: int, error: BaseException | None = None) -> Iterator[None]:
    """Inside the block, every run stops after ``epoch`` (its checkpoint written), through the public
    ``kdhub_epoch_ended`` hook: ``KeyboardInterrupt`` by default (the run ends KILLED, resumable)."""
    plugin = _Interrupt(epoch, error if error is not None else KeyboardInterrupt(f"interrupted after epoch {epoch}"))
    with registered(plugin, f"kdhub-testing-interrupt-{id(plugin)}"):
        yield
