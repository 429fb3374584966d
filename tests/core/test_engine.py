"""Real tiny runs: what gets logged, a teacher taken from an earlier run, failure and exact resume."""

import math

import mlflow
import pytest
import torch

import kdhub
from kdhub.engine.runner import run
from kdhub.registry import loading as plugins
from kdhub.testing import interrupt_after, registered
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
    assert "policy.name" not in data.params  # nothing distilled: the default policy does not apply
    assert "ce_weight" not in data.params
    for key in ("loss/ce", "loss/total", "train/acc", "test/acc", "val/acc", "lr", "images_per_s", "test/acc_max_seen"):
        assert key in data.metrics, key
    assert "policy/distill_factor" not in data.metrics  # nothing is distilled: no factor to chart
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


def test_an_epoch_checkpoint_can_be_the_teacher(teacher_run, mlflow_uri, tmp_path):
    client = mlflow.MlflowClient(mlflow_uri)
    first = torch.load(client.download_artifacts(teacher_run.run_id, "checkpoints/epoch_001.pt", str(tmp_path)))
    final = torch.load(client.download_artifacts(teacher_run.run_id, "checkpoints/final.pt", str(tmp_path)))
    assert first["epoch"] == 1
    assert any(not torch.equal(first["model"][k], final["model"][k]) for k in first["model"])
    config = kd_config(teacher_run, mlflow_uri, epochs=1)
    config["teacher"]["weights"] = f"runs:/{teacher_run.run_id}/checkpoints/epoch_001.pt"
    result = run(config)
    # the teacher evaluated in this run is the epoch-1 teacher: its test accuracy is the one logged after epoch 1
    epoch_acc = {m.step: m.value for m in client.get_metric_history(teacher_run.run_id, "test/acc")}
    assert result.metrics["test/accuracy/teacher_acc"] == pytest.approx(epoch_acc[1])
    assert math.isfinite(result.last_acc)


def test_resume_after_interruption_gives_the_same_weights(teacher_run, mlflow_uri):
    config = kd_config(teacher_run, mlflow_uri, epochs=3)
    config["data"]["val_fraction"] = 0.1
    reference = run(config)

    with interrupt_after(2, KeyboardInterrupt("simulated interruption")), pytest.raises(KeyboardInterrupt):
        run(config)
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
    for key, logged in _steps_by_key(client, resumed.run_id).items():
        assert len(logged) == len(set(logged)), f"{key} logged twice at a step: {logged}"


def test_a_failing_run_is_marked_failed_with_the_reason(tiny_config, monkeypatch):
    class Boom:
        @kdhub.hookimpl
        def kdhub_run_started(self, run):
            raise RuntimeError("disk full")

    with (
        registered(Boom(), "boom"),
        pytest.raises(plugins.PluginHookError, match="plugin 'boom' from local: kdhub_run_started raised"),
    ):
        run(tiny_config)
    client = mlflow.MlflowClient(tiny_config["tracking"]["uri"])
    failed = client.search_runs([client.get_experiment_by_name("tests").experiment_id], "attributes.status = 'FAILED'")
    assert any("disk full" in r.data.tags.get("kdhub.failure", "") for r in failed)


def _steps_by_key(client: mlflow.MlflowClient, run_id: str) -> dict[str, list[int]]:
    keys = client.get_run(run_id).data.metrics
    return {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in keys}


def test_a_resumed_run_logs_every_step_once(teacher_run, mlflow_uri, monkeypatch):
    """Killed after epoch 2's checkpoint but before its values reached MLflow: the resume logs them, once."""
    from kdhub.contract.runlog import EpochLog

    config = kd_config(teacher_run, mlflow_uri, epochs=3)
    config["checkpoint"] = {"every": 1}
    original = EpochLog.flush

    def dies_at_epoch_2(self, skip=None):
        if self.step == 2:
            raise KeyboardInterrupt("killed after the checkpoint of epoch 2")
        return original(self, skip)

    monkeypatch.setattr(EpochLog, "flush", dies_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    monkeypatch.setattr(EpochLog, "flush", original)
    client = mlflow.MlflowClient(mlflow_uri)
    killed = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id], "attributes.status = 'KILLED'", max_results=1
    )[0]
    assert _steps_by_key(client, killed.info.run_id)["loss/total"] == [1]  # epoch 2 never reached MLflow
    resumed = run(config, resume_run_id=killed.info.run_id)
    steps = _steps_by_key(client, resumed.run_id)
    assert steps["loss/total"] == [1, 2, 3]
    for key, logged in steps.items():
        assert len(logged) == len(set(logged)), f"{key} logged twice at a step: {logged}"
    files = {a.path for a in client.list_artifacts(resumed.run_id, "checkpoints")}
    assert {f"checkpoints/epoch_{e:03d}.pt" for e in (1, 2, 3)} <= files


def test_each_metric_is_logged_once_per_step(tiny_config, mlflow_uri):
    """Metrics due every epoch, the summary and the final evaluation never repeat a step's point."""
    config = {
        **tiny_config,
        "epochs": 3,
        "metrics": [
            {"name": "accuracy", "every": 1},
            {"name": "per_class_accuracy", "every": 1},
            {"name": "per_class_accuracy", "split": "val", "at": [2]},
        ],
    }
    result = run(config)
    steps = _steps_by_key(mlflow.MlflowClient(mlflow_uri), result.run_id)
    for key, logged in steps.items():
        assert len(logged) == len(set(logged)), f"{key} logged twice at a step: {logged}"
    assert steps["test/acc"] == [1, 2, 3]
    assert "test/accuracy/acc" not in steps  # the same number as test/acc: logged once
    assert steps["test/accuracy/acc_top5"] == [1, 2, 3]
    assert steps["val/per_class_accuracy/mean_class_acc"] == [2, 3]
    assert steps["test/acc_max_seen"] == [1, 2, 3]


def test_a_bare_interrupt_is_named_in_the_failure_tag(tiny_config):
    with interrupt_after(1, KeyboardInterrupt()), pytest.raises(KeyboardInterrupt):
        run(tiny_config)
    client = mlflow.MlflowClient(tiny_config["tracking"]["uri"])
    killed = client.search_runs([client.get_experiment_by_name("tests").experiment_id], "attributes.status = 'KILLED'")
    reason = killed[0].data.tags["kdhub.failure"]
    assert reason.startswith("KeyboardInterrupt: interrupted (Ctrl-C or SIGINT) (resume with: kdhub run --resume ")


def test_a_run_in_the_same_process_does_not_inherit_deterministic_algorithms(tiny_config):
    """A study worker runs one run after another: ``train.deterministic`` is each run's own."""
    seen = []
    with registered(_DeterminismProbe(seen)):
        run({**tiny_config, "epochs": 1, "train": {"progress": False, "deterministic": True}}, track=False)
        run({**tiny_config, "epochs": 1}, track=False)
    assert seen == [True, False]
    assert not torch.are_deterministic_algorithms_enabled()


class _DeterminismProbe:
    """A plugin object watching each run start (the hook fires after the run's process settings)."""

    def __init__(self, seen: list[bool]) -> None:
        self.seen = seen

    @kdhub.hookimpl
    def kdhub_run_started(self, run):
        self.seen.append(torch.are_deterministic_algorithms_enabled())
