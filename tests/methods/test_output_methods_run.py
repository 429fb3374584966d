"""Real tiny runs through the engine with this library's output-based methods (digits, small CNNs)."""

from __future__ import annotations

import math

import mlflow
import pytest

from kdhub.engine.runner import run

pytestmark = pytest.mark.slow  # two to three real runs with MLflow logging: 30 s and more on 2 shared cores


def _config(mlflow_uri: str, **extra: object) -> dict:
    config = {
        "seed": 0,
        "epochs": 1,
        "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
        "student": {"name": "cnn", "options": {"width": 4}},
        "train": {"progress": False},
        "tracking": {"uri": mlflow_uri, "experiment": "tests-output-methods"},
    }
    config.update(extra)
    return config


def test_label_smoothing_training_without_teacher(mlflow_uri: str) -> None:
    config = _config(mlflow_uri, ce_weight=0.0, methods=[{"name": "label_smoothing", "options": {"alpha": 0.1}}])
    result = run(config)
    metrics = mlflow.MlflowClient(mlflow_uri).get_run(result.run_id).data.metrics
    assert metrics["loss/label_smoothing"] > 0
    assert "loss/ce" not in metrics
    assert metrics["loss/total"] == pytest.approx(metrics["loss/label_smoothing"], rel=1e-5)
    assert result.last_acc > 20  # 10 classes: better than chance after one epoch


def test_all_teacher_methods_in_one_run(mlflow_uri: str) -> None:
    teacher = run(_config(mlflow_uri, student={"name": "cnn", "options": {"width": 8}}))
    methods = [
        {"name": "dkd", "options": {"warmup": 2}},
        {"name": "dist"},
        {"name": "deit"},
        {"name": "mse_logits", "weight": 0.1},
        {"name": "logit_std", "weight": 1.0},
    ]
    config = _config(
        mlflow_uri,
        epochs=2,
        ce_weight=1.0,
        teacher={"name": "cnn", "options": {"width": 8}, "weights": f"runs:/{teacher.run_id}/checkpoints/final.pt"},
        methods=methods,
    )
    result = run(config)
    data = mlflow.MlflowClient(mlflow_uri).get_run(result.run_id).data
    for key in ("dkd.tckd", "dkd.nckd", "dist.inter", "dist.intra", "deit", "mse_logits", "logit_std"):
        assert math.isfinite(data.metrics[f"loss/{key}"]), key
        assert data.metrics[f"loss/{key}"] > 0, key
    assert data.params["method.dkd.beta"] == "8.0"
    assert data.params["method.dist.temperature"] == "1.0"
    assert math.isfinite(result.last_acc)
    assert result.last_acc > 10
