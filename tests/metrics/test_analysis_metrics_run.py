"""A real short distillation run on digits with every analysis metric, logged to MLflow."""

from __future__ import annotations

import math

import mlflow
import pytest
import torch

from kdhub.engine.runner import run
from kdhub.tracking import load_table


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    result = run(
        {
            "seed": 1,
            "epochs": 2,
            "data": {"name": "digits", "batch_size": 64},
            "student": {"name": "cnn", "options": {"width": 16}},
            "metrics": ["accuracy"],
            "schedule": {"name": "cosine"},
            "train": {"progress": False},
        },
        track=False,
    )
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(result.student.state_dict(), path)
    return str(path)


@pytest.mark.slow
def test_all_metrics_in_a_real_run(teacher_weights: str, mlflow_uri: str) -> None:
    config = {
        "seed": 0,
        "epochs": 2,
        "data": {"name": "digits", "batch_size": 64, "eval_batch_size": 100},
        "student": {"name": "cnn", "options": {"width": 8}},
        "teacher": {"name": "cnn", "options": {"width": 16}, "weights": teacher_weights},
        "ce_weight": 0.1,
        "methods": [{"name": "kd", "weight": 0.9, "options": {"temperature": 4}}],
        "metrics": [
            "accuracy",
            {"name": "agreement", "split": "test"},
            {"name": "fidelity", "split": "test"},
            {"name": "calibration", "split": "test"},
            {"name": "cka", "split": "test", "options": {"max_samples": 256, "examples": [0, 1, 2]}},
            {"name": "confidence", "split": "train"},
            {"name": "confidence", "split": "test"},
            {"name": "interpolation", "split": "train"},
            {"name": "embedding", "split": "test", "options": {"max_samples": 150, "max_iter": 250, "highlight": [3]}},
            {"name": "eigenspace", "split": "train", "every": 1, "options": {"patches": 2000}},
            {"name": "confusion", "split": "test"},
        ],
        "schedule": {"name": "cosine"},
        "train": {"progress": False},
        "tracking": {"uri": mlflow_uri, "experiment": "tests", "run_name": "analysis-metrics"},
    }
    result = run(config)
    client = mlflow.MlflowClient(mlflow_uri)
    m = client.get_run(result.run_id).data.metrics

    assert m["test/agreement/pa"] == pytest.approx(m["test/fidelity/agreement"])  # the same quantity twice
    assert m["test/agreement/kd_error"] == pytest.approx(100 - m["test/agreement/pa"])
    assert 0 <= m["test/agreement/pa"] <= m["test/agreement/pa_top5"] <= 100  # percent, as the accuracies
    assert m["test/fidelity/kl"] > 0
    assert 0 <= m["test/calibration/ece"] <= 1
    assert 0 <= m["test/calibration/teacher_ece"] <= 1
    assert m["test/cka/full_samples"] == 256
    assert m["test/cka/minibatch_batches"] == 4  # 450 test images: 4 batches of 100, the last 50 dropped
    assert 0 < m["test/cka/full_mean"] <= 1
    for split in ("train", "test"):
        assert m[f"{split}/confidence/n"] > 100
        assert math.isfinite(m[f"{split}/confidence/slope"])
    assert m["train/interpolation/teacher_train_acc"] > 50
    assert m["train/interpolation/teacher_interpolates"] in (0.0, 1.0)
    assert m["test/embedding/samples"] == 150
    history = client.get_metric_history(result.run_id, "train/eigenspace/top_share")
    assert len(history) >= 2
    assert all(0 < h.value <= 1 for h in history)
    assert m["train/eigenspace/patches"] == pytest.approx(2000, rel=0.05)

    assert m["test/confusion/acc"] == pytest.approx(m["test/acc_last"])
    confusion = load_table(result.run_id, "test/confusion_teacher", mlflow_uri)
    assert sum(sum(confusion[str(k)]) for k in range(10)) == 450

    table = load_table(result.run_id, "test/agreement", mlflow_uri)
    assert table["class"] == list(range(10))
    assert sum(table["count"]) == 450
    assert set(table) >= {"pa_by_label", "pa_by_teacher", "count"}
    for split, names in (
        (
            "test",
            ("agreement", "fidelity", "calibration", "cka", "cka_per_sample", "confidence", "embedding", "confusion"),
        ),
        ("train", ("confidence", "eigenspace")),
    ):
        logged = {a.path for a in client.list_artifacts(result.run_id, f"figures/{split}")}
        assert {f"figures/{split}/{name}.png" for name in names} <= logged
