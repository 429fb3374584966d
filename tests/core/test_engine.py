"""Real tiny runs: what gets logged, a teacher taken from an earlier run, failure and exact resume."""

import math

import mlflow
import pytest
import torch

import kdhub
from kdhub import plugins
from kdhub.engine.loop import run
from kdhub.tracking import load_table


@pytest.fixture(scope="module")
def teacher_run(mlflow_uri):
    config = {
        "seed": 1,
        "epochs": 2,
        "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
        "student": {"name": "cnn", "options": {"width": 16}},
        "schedule": {"name": "cosine"},
        "train": {"progress": False},
        "checkpoint": {"every": 1},
        "tracking": {"uri": mlflow_uri, "experiment": "tests", "run_name": "teacher", "log_model": False},
    }
    return run(config)


def test_teacher_run_logs_params_metrics_tables_and_checkpoints(teacher_run, mlflow_uri):
    client = mlflow.MlflowClient(mlflow_uri)
    data = client.get_run(teacher_run.run_id).data
    assert data.tags["student"] == "cnn(width=16)"
    assert data.tags["teacher"] == "none"
    assert data.tags["seed"] == "1"
    assert data.tags["kdhub.version"] == kdhub.__version__
    assert data.params["student.width"] == "16"
    assert data.params["optim.lr"] == "0.05"
    assert data.params["policy.name"] == "constant"
    for key in ("loss/ce", "loss/total", "train/acc", "test/acc", "val/acc", "lr", "images_per_s", "test/acc_max_seen"):
        assert key in data.metrics, key
    assert data.metrics["test/acc_last"] == pytest.approx(teacher_run.last_acc)
    assert teacher_run.last_acc > 50  # digits is easy: 2 epochs already learn it
    artifacts = {a.path for a in client.list_artifacts(teacher_run.run_id, "checkpoints")}
    assert {
        "checkpoints/final.pt",
        "checkpoints/last.pt",
        "checkpoints/epoch_001.pt",
        "checkpoints/epoch_002.pt",
    } <= artifacts
    assert "config.yaml" in {a.path for a in client.list_artifacts(teacher_run.run_id)}
    table = load_table(teacher_run.run_id, "test/per_class_accuracy", mlflow_uri)
    assert table["class"] == list(range(10))
    assert sum(table["count"]) == 450
    overall = sum(a * n for a, n in zip(table["student"], table["count"], strict=True)) / 450
    assert overall == pytest.approx(teacher_run.last_acc)


def kd_config(teacher_run, mlflow_uri, epochs=3):
    return {
        "seed": 0,
        "epochs": epochs,
        "data": {"name": "digits", "batch_size": 64},
        "student": {"name": "cnn", "options": {"width": 4}},
        "teacher": {
            "name": "cnn",
            "options": {"width": 16},
            "weights": f"runs:/{teacher_run.run_id}/checkpoints/final.pt",
        },
        "ce_weight": 0.1,
        "methods": [{"name": "kd", "weight": 0.9, "options": {"temperature": 4}}],
        "metrics": ["accuracy"],
        "train": {"progress": False},
        "tracking": {"uri": mlflow_uri, "experiment": "tests", "log_model": False},
    }


def test_kd_student_uses_the_teacher_of_an_earlier_run(teacher_run, mlflow_uri):
    result = run(kd_config(teacher_run, mlflow_uri, epochs=1))
    data = mlflow.MlflowClient(mlflow_uri).get_run(result.run_id).data
    # the teacher's test accuracy, measured again in this run, is the earlier run's
    assert data.metrics["test/accuracy/teacher_acc"] == pytest.approx(teacher_run.last_acc)
    assert data.params["method.kd.temperature"] == "4.0"
    assert data.params["method.kd.weight"] == "0.9"
    assert data.tags["method"] == "kd"
    assert data.tags["teacher"] == "cnn(width=16)"
    assert data.tags["kdhub.teacher_run"] == teacher_run.run_id
    assert data.metrics["loss/kd"] > 0
    assert data.metrics["policy/distill_factor"] == 1.0


def test_an_epoch_checkpoint_can_be_the_teacher(teacher_run, mlflow_uri):
    config = kd_config(teacher_run, mlflow_uri, epochs=1)
    config["teacher"]["weights"] = f"runs:/{teacher_run.run_id}/checkpoints/epoch_001.pt"
    assert math.isfinite(run(config).last_acc)


class Interrupt:
    """A lifecycle plugin that stops the run after an epoch, as a crash or Ctrl-C would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    @kdhub.hookimpl
    def kdhub_epoch_ended(self, run, epoch, metrics):
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated interruption")


def test_resume_after_interruption_gives_the_same_weights(teacher_run, mlflow_uri):
    config = kd_config(teacher_run, mlflow_uri, epochs=3)
    config["data"]["val_fraction"] = 0.1
    reference = run(config)

    plugins.register_module(Interrupt(2), name="interrupt")
    try:
        with pytest.raises(KeyboardInterrupt):
            run(config)
    finally:
        plugins.unregister("interrupt")
    client = mlflow.MlflowClient(mlflow_uri)
    interrupted = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id], "attributes.status = 'KILLED'", max_results=1
    )[0]
    assert "simulated interruption" in interrupted.data.tags["kdhub.failure"]

    resumed = run(config, resume_run_id=interrupted.info.run_id)
    assert resumed.run_id == interrupted.info.run_id
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    for (name, a), b in zip(reference.student.state_dict().items(), resumed.student.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.last_acc == reference.last_acc


def test_a_failing_run_is_marked_failed_with_the_reason(tiny_config, monkeypatch):
    class Boom:
        @kdhub.hookimpl
        def kdhub_run_started(self, run):
            raise RuntimeError("disk full")

    plugins.register_module(Boom(), name="boom")
    try:
        with pytest.raises(RuntimeError):
            run(tiny_config)
    finally:
        plugins.unregister("boom")
    client = mlflow.MlflowClient(tiny_config["tracking"]["uri"])
    failed = client.search_runs([client.get_experiment_by_name("tests").experiment_id], "attributes.status = 'FAILED'")
    assert any("disk full" in r.data.tags.get("kdhub.failure", "") for r in failed)
