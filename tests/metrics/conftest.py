"""A tiny fake evaluation for metric tests: TinyNet models, hand-built EvalBatches, simulated all-reduce."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import kdhub
from kdhub.engine.features import FeatureTaps
from kdhub.testing import TINY_TAPS, TinyNet, evaluate_metric

NUM_CLASSES = 10
MEAN, STD = 0.5, 0.25  # the normalisation of the test images: images = (pixels / 255 - MEAN) / STD


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
    """An independent oracle of what metrics see: both models in eval mode on (normalised) ``images``, the
    metric's roles tapped, batches in order."""
    if indices is None:
        indices = torch.arange(len(labels))
    roles = metric.feature_roles
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
        yield kdhub.EvalBatch(
            student_logits=s_logits,
            teacher_logits=t_logits,
            labels=y,
            indices=idx,
            student_features=s_feats,
            teacher_features=t_feats,
        )


def run_eval(
    metric: kdhub.Metric,
    student: nn.Module,
    teacher: nn.Module | None,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    start: bool = True,
    split: str = "test",
    epoch: int = 1,
) -> kdhub.MetricResult:
    """One process of the engine's evaluation (kdhub.testing.evaluate_metric) on uint8 ``pixels``."""
    return evaluate_metric(
        lambda: metric,
        student,
        teacher,
        pixels,
        labels,
        batch_size=batch_size,
        start=start,
        split=split,
        epoch=epoch,
        num_classes=NUM_CLASSES,
        mean=MEAN,
        std=STD,
    )


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
    """A student (TinyNet width 8), a teacher (width 16), 40 random 8x8 images and labels 0..9.

    ``pixels`` are the uint8 images the engine evaluates; ``images`` the normalised tensors the models see.
    """
    torch.manual_seed(0)
    student = TinyNet(NUM_CLASSES, width=8).eval()
    teacher = TinyNet(NUM_CLASSES, width=16).eval()
    pixels = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    images = (pixels.float() / 255 - MEAN) / STD
    labels = torch.arange(40) % NUM_CLASSES
    return SimpleNamespace(student=student, teacher=teacher, pixels=pixels, images=images, labels=labels)


@pytest.fixture
def fake() -> SimpleNamespace:
    """The helpers above, for test modules (conftest modules are not imported by name)."""
    return SimpleNamespace(
        ctx=make_ctx,
        batches=eval_batches,
        run=run_eval,
        same=assert_same,
        results_equal=assert_results_equal,
    )
