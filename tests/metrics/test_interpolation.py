"""interpolation: train-set accuracy of teacher and student and the interpolation flags."""

from __future__ import annotations

import pytest
import torch

import kdhub


def run(fake, split: str = "train", teacher: bool = True, **options) -> kdhub.MetricResult:
    y = torch.tensor([0, 1, 2, 0])
    zs = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1]), 3).float()  # 3 of 4 right
    zt = torch.nn.functional.one_hot(y, 3).float()  # all right
    metric = kdhub.create("metric", "interpolation", **options)
    t = torch.nn.Identity() if teacher else None
    metric.reset(fake.ctx(torch.nn.Identity(), t, 4, num_classes=3, class_names=["a", "b", "c"], split=split))
    metric.update(
        kdhub.EvalBatch(
            student_logits=zs[:3], teacher_logits=zt[:3] if teacher else None, labels=y[:3], indices=torch.arange(3)
        )
    )
    metric.update(
        kdhub.EvalBatch(
            student_logits=zs[3:], teacher_logits=zt[3:] if teacher else None, labels=y[3:], indices=torch.arange(3, 4)
        )
    )
    return metric.compute()


def test_accuracies_and_flags(fake) -> None:
    result = run(fake)
    assert result.scalars == {
        "student_train_acc": 75.0,
        "student_interpolates": 0.0,
        "teacher_train_acc": 100.0,
        "teacher_interpolates": 1.0,
    }
    assert run(fake, threshold=75.0).scalars["student_interpolates"] == 1.0
    assert run(fake, threshold=75.1).scalars["student_interpolates"] == 0.0


def test_no_teacher(fake) -> None:
    assert set(run(fake, teacher=False).scalars) == {"student_train_acc", "student_interpolates"}


def test_warns_on_other_splits(fake) -> None:
    with pytest.warns(UserWarning, match="split: train"):
        run(fake, split="test")
