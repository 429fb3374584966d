"""A tiny fake evaluation for metric tests: TinyNet models, hand-built EvalBatches, simulated all-reduce."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import kdhub
from kdhub.engine.features import FeatureTaps, dry_run_shapes
from kdhub.testing import TINY_TAPS, TinyNet

NUM_CLASSES = 10


def make_ctx(student: nn.Module, teacher: nn.Module | None, num_samples: int, **kw) -> kdhub.MetricContext:
    defaults = {
        "num_classes": NUM_CLASSES,
        "split": "test",
        "epoch": 1,
        "device": torch.device("cpu"),
        "class_names": [f"c{i}" for i in range(NUM_CLASSES)],
        "student": student,
        "teacher": teacher,
        "num_samples": num_samples,
        "seed": 0,
    }
    defaults.update(kw)
    return kdhub.MetricContext(**defaults)


@torch.no_grad()
def eval_batches(
    metric: kdhub.Metric,
    student: nn.Module,
    teacher: nn.Module | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    indices: torch.Tensor | None = None,
) -> Iterator[kdhub.EvalBatch]:
    """EvalBatches as the engine builds them: both models in eval mode, the metric's roles tapped."""
    if indices is None:
        indices = torch.arange(len(labels))
    roles = metric.feature_roles()
    student.eval()
    if teacher is not None:
        teacher.eval()
    for start in range(0, len(labels), batch_size):
        x, y, idx = images[start : start + batch_size], labels[start : start + batch_size], indices[start:][:batch_size]
        with FeatureTaps(student, TINY_TAPS, roles) as rec:
            s_logits = student(x)
            s_feats = rec.collect()
        t_logits, t_feats = None, {}
        if teacher is not None:
            with FeatureTaps(teacher, TINY_TAPS, roles) as rec:
                t_logits = teacher(x)
                t_feats = rec.collect()
        yield kdhub.EvalBatch(s_logits, t_logits, y, idx, s_feats, t_feats)


def run_eval(
    metric: kdhub.Metric,
    student: nn.Module,
    teacher: nn.Module | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    start: bool = True,
    **ctx_kw,
) -> kdhub.MetricResult:
    """start (optionally), reset, update over the batches, compute."""
    ctx = make_ctx(student, teacher, len(labels), **ctx_kw)
    if start:
        metric.start(ctx)
    metric.reset(ctx)
    for batch in eval_batches(metric, student, teacher, images, labels, batch_size):
        metric.update(batch)
    return metric.compute()


def run_distributed(
    factory: Callable[[], kdhub.Metric],
    student: nn.Module,
    teacher: nn.Module | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    world: int = 2,
    shapes: bool = False,
) -> kdhub.MetricResult:
    """Simulate ``world`` processes as the engine shards evaluation: rank r takes batches r, r + world, ...
    (a rank may get none), with its own model copies; every accumulator is summed in place on every
    rank (all-reduce), then rank 0 computes. ``shapes`` puts dry-run feature shapes on the context."""
    n = len(labels)
    metrics = []
    for rank in range(world):
        starts = range(rank * batch_size, n, batch_size * world)
        idx = torch.cat([torch.arange(s, min(s + batch_size, n)) for s in starts] or [torch.zeros(0, dtype=torch.long)])
        s, t = copy.deepcopy(student), copy.deepcopy(teacher)
        metric = factory()
        ctx = make_ctx(s, t, n)
        if shapes:
            ctx.student_shapes = dry_run_shapes(s, TINY_TAPS, images[:2])[0]  # type: ignore[attr-defined]
            ctx.teacher_shapes = dry_run_shapes(t, TINY_TAPS, images[:2])[0] if t is not None else {}  # type: ignore[attr-defined]
        metric.start(ctx)
        metric.reset(ctx)
        for batch in eval_batches(metric, s, t, images[idx], labels[idx], batch_size, indices=idx):
            metric.update(batch)
        metrics.append(metric)
    accs = [m.accumulators() for m in metrics]
    for a in accs[1:]:
        assert list(a) == list(accs[0]), "processes hold different accumulators: the all-reduce would not match"
        assert all(a[k].shape == accs[0][k].shape for k in a)
    for key in accs[0]:
        total = sum(a[key] for a in accs)
        for a in accs:
            a[key].copy_(total)
    return metrics[0].compute()


def assert_same(a: float, b: float, rel: float = 1e-9, abs_: float = 1e-12) -> None:
    if isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float), (a, b)
        assert math.isnan(b), (a, b)
    else:
        assert b == pytest.approx(a, rel=rel, abs=abs_), (a, b)


def assert_results_equal(
    r1: kdhub.MetricResult, r2: kdhub.MetricResult, skip: Callable[[str], bool] = lambda k: False
) -> None:
    """Same scalar keys and values, same tables (NaN equal to NaN)."""
    assert set(r1.scalars) == set(r2.scalars)
    for key, value in r1.scalars.items():
        if not skip(key):
            assert_same(value, r2.scalars[key])
    assert set(r1.tables) == set(r2.tables)
    for name, table in r1.tables.items():
        assert set(table) == set(r2.tables[name]), name
        for col, values in table.items():
            if skip(col):
                continue
            other = r2.tables[name][col]
            assert len(values) == len(other), (name, col)
            for x, y in zip(values, other, strict=True):
                if isinstance(x, float):
                    assert_same(x, y)
                else:
                    assert x == y, (name, col)


@pytest.fixture
def tiny() -> SimpleNamespace:
    """A student (TinyNet width 8), a teacher (width 16), 40 random 8x8 images and labels 0..9."""
    torch.manual_seed(0)
    student = TinyNet(NUM_CLASSES, width=8).eval()
    teacher = TinyNet(NUM_CLASSES, width=16).eval()
    images = torch.randn(40, 3, 8, 8)
    labels = torch.arange(40) % NUM_CLASSES
    return SimpleNamespace(student=student, teacher=teacher, images=images, labels=labels)


@pytest.fixture
def fake() -> SimpleNamespace:
    """The helpers above, for test modules (conftest modules are not imported by name)."""
    return SimpleNamespace(
        ctx=make_ctx,
        batches=eval_batches,
        run=run_eval,
        distributed=run_distributed,
        same=assert_same,
        results_equal=assert_results_equal,
    )
