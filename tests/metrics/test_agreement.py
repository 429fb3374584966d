"""agreement: PA overall, per class (by label, by teacher prediction), top-k, KD error."""

from __future__ import annotations

import math

import pytest
import torch

import kdhub
from kdhub.testing import test_batch


def run(batches: list[kdhub.EvalBatch], num_classes: int, fake, **options) -> kdhub.MetricResult:
    metric = kdhub.create("metric", "agreement", **options)
    names = [str(i) for i in range(num_classes)]
    ctx = fake.ctx(torch.nn.Identity(), torch.nn.Identity(), 0, num_classes=num_classes, class_names=names)
    metric.reset(ctx)
    for batch in batches:
        metric.update(batch)
    return metric.compute()


def tb() -> kdhub.EvalBatch:
    out = test_batch()
    return kdhub.EvalBatch(
        student_logits=out.student_logits, teacher_logits=out.teacher_logits, labels=out.labels, indices=out.indices
    )


def test_test_batch(fake) -> None:
    # TB: student argmax [2, 0] (ties of [0, 0, 0] go to the first index), teacher argmax [0, 0]
    result = run([tb()], 3, fake, top_k=3)
    assert result.scalars["pa"] == pytest.approx(50.0)
    assert result.scalars["kd_error"] == pytest.approx(50.0)
    assert result.scalars["pa_top3"] == 100.0  # with k = C the teacher's class is always in the top k
    table = result.tables["agreement"]
    # by label: y = [2, 0] -> class 0 agrees (100 %), class 2 does not (0 %), class 1 is empty (NaN)
    assert table["pa_by_label"][0] == 100.0
    assert table["pa_by_label"][2] == 0.0
    assert math.isnan(table["pa_by_label"][1])
    # by teacher prediction: both samples predicted 0 by the teacher, one agrees
    assert table["pa_by_teacher"][0] == 50.0
    assert math.isnan(table["pa_by_teacher"][1])
    assert table["count"] == [1, 0, 1]
    assert table["teacher_count"] == [2, 0, 0]
    assert result.scalars["mean_class_pa"] == pytest.approx(50.0)  # NaN class left out
    assert result.scalars["worst_class_pa"] == 0.0


def test_top_k_and_per_class(fake) -> None:
    s = torch.tensor([[5.0, 4, 3, 0], [0, 5, 4, 3], [3, 0, 5, 4], [1, 2, 3, 4]])
    t = torch.tensor([[9.0, 0, 0, 0], [0, 0, 9, 0], [0, 0, 0, 9], [9, 0, 0, 0]])
    y = torch.tensor([0, 1, 1, 3])
    result = run(
        [kdhub.EvalBatch(student_logits=s, teacher_logits=t, labels=y, indices=torch.arange(4))], 4, fake, top_k=2
    )
    # top-1: s argmax [0, 1, 2, 3] vs t [0, 2, 3, 0] -> only sample 0 agrees
    assert result.scalars["pa"] == pytest.approx(25.0)
    # top-2 of s: {0,1}, {1,2}, {2,3}, {3,2}; teacher's class 0, 2, 3, 0 -> hits 1, 1, 1, 0
    assert result.scalars["pa_top2"] == pytest.approx(75.0)
    table = result.tables["agreement"]
    assert table["pa_by_label"][:2] == [100.0, 0.0]
    assert table["pa_by_label"][3] == 0.0
    assert table["pa_by_teacher"][0] == 50.0
    assert table["pa_by_teacher"][2] == 0.0


def test_sums_not_means(fake) -> None:
    """PA of batches of 3 and 1 samples is the sample mean (0.5), not the mean of batch means."""
    s = torch.tensor([[1.0, 0], [1, 0], [0, 1], [1, 0]])
    t = torch.tensor([[1.0, 0], [0, 1], [1, 0], [1, 0]])
    y = torch.tensor([0, 1, 0, 0])
    whole = run([kdhub.EvalBatch(student_logits=s, teacher_logits=t, labels=y, indices=torch.arange(4))], 2, fake)
    parts = run(
        [
            kdhub.EvalBatch(student_logits=s[:3], teacher_logits=t[:3], labels=y[:3], indices=torch.arange(3)),
            kdhub.EvalBatch(student_logits=s[3:], teacher_logits=t[3:], labels=y[3:], indices=torch.arange(3, 4)),
        ],
        2,
        fake,
    )
    assert whole.scalars["pa"] == parts.scalars["pa"] == pytest.approx(50.0)  # batch means would give (1/3 + 1) / 2
    assert whole.tables == parts.tables
