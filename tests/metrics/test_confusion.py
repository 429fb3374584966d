"""confusion: counts by hand, the top confusion of each class, teacher twin, and a real run logged to MLflow."""

from __future__ import annotations

import io
import math

import pytest
import torch

import kdhub
from kdhub.engine.runner import run as train
from kdhub.testing import test_batch


def evaluate(batches: list[kdhub.EvalBatch], num_classes: int, fake, teacher: bool = True) -> kdhub.MetricResult:
    metric = kdhub.create("metric", "confusion")
    names = [f"k{i}" for i in range(num_classes)]
    t = torch.nn.Identity() if teacher else None
    metric.reset(fake.ctx(torch.nn.Identity(), t, 0, num_classes=num_classes, class_names=names))
    for batch in batches:
        metric.update(batch)
    return metric.compute()


def one_hot_batch(y: list[int], student: list[int], teacher: list[int] | None, c: int) -> kdhub.EvalBatch:
    def logits(pred: list[int]) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor(pred), c).float()

    return kdhub.EvalBatch(
        student_logits=logits(student),
        teacher_logits=logits(teacher) if teacher else None,
        labels=torch.tensor(y),
        indices=torch.arange(len(y)),
    )


def test_counts_by_hand(fake) -> None:
    # the per-class example of ALGORITHMS-style tests: y = [0, 0, 1, 1, 2], student predicts [0, 1, 1, 1, 0]
    y, student, teacher = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0], [0, 0, 1, 0, 2]
    result = evaluate(
        [one_hot_batch(y[:2], student[:2], teacher[:2], 3), one_hot_batch(y[2:], student[2:], teacher[2:], 3)], 3, fake
    )
    table = result.tables["confusion"]
    # rows = true class; columns "0", "1", "2" = predicted class
    assert table["0"] == [1, 0, 1]  # class 0 -> 0 once; class 2 -> 0 once
    assert table["1"] == [1, 2, 0]
    assert table["2"] == [0, 0, 0]
    assert table["count"] == [2, 2, 1]
    assert table["top_confusion"] == [1, -1, 0]  # class 1 has no error
    assert table["top_confusion_pct"][0] == 50.0
    assert math.isnan(table["top_confusion_pct"][1])
    assert table["top_confusion_pct"][2] == 100.0
    assert result.scalars["acc"] == pytest.approx(60.0)  # 3 of 5 on the diagonal
    assert result.scalars["max_confusion_pct"] == 100.0
    teacher_table = result.tables["confusion_teacher"]
    assert teacher_table["0"] == [2, 1, 0]
    assert teacher_table["2"] == [0, 0, 1]
    assert result.scalars["teacher_acc"] == pytest.approx(80.0)
    # the matrix sums to the class counts and its diagonal gives the per-class accuracy
    buf = io.BytesIO()
    result.figures["confusion"].savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    assert len(result.figures["confusion"].axes) == 4  # two matrices and two colour bars


def test_test_batch_and_no_teacher(fake) -> None:
    out = test_batch()  # student argmax [2, 0] (ties go to index 0), labels [2, 0]: both right
    batch = kdhub.EvalBatch(
        student_logits=out.student_logits, teacher_logits=None, labels=out.labels, indices=out.indices
    )
    result = evaluate([batch], 3, fake, teacher=False)
    assert result.scalars == {"acc": 100.0, "max_confusion_pct": 0.0}
    assert set(result.tables) == {"confusion"}
    assert result.tables["confusion"]["top_confusion"] == [-1, -1, -1]
    assert math.isnan(result.tables["confusion"]["top_confusion_pct"][1])  # empty class


def test_real_run_logs_the_confusion_of_a_hurt_class(mlflow_uri) -> None:
    result = train(
        {
            "seed": 0,
            "epochs": 1,
            "data": {"name": "digits", "batch_size": 64},
            "student": {"name": "mlp", "options": {"hidden": [16]}},
            "metrics": ["per_class_accuracy", "confusion"],
            "train": {"progress": False},
            "tracking": {"uri": mlflow_uri, "experiment": "tests-confusion"},
        }
    )
    from kdhub.tracking import load_table

    confusion = load_table(result.run_id, "test/confusion", mlflow_uri)
    per_class = load_table(result.run_id, "test/per_class_accuracy", mlflow_uri)
    for m in range(10):
        row = [confusion[str(k)][m] for k in range(10)]
        assert sum(row) == confusion["count"][m] == per_class["count"][m]
        assert 100 * row[m] / sum(row) == pytest.approx(per_class["student"][m])
    assert result.metrics["test/acc"] == pytest.approx(result.last_acc)  # its acc is the engine's test/acc
    assert "test/confusion/acc" not in result.metrics
