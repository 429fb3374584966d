"""Runs that go wrong end loudly and can be taken up again: divergence, SIGTERM, SIGKILL, resume rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

import kdhub
from kdhub.commands.cli import main
from kdhub.engine.runner import run
from kdhub.testing import registered
from kdhub.tracking import Tracker


class NaNAfter(kdhub.Method):
    """Returns NaN from a chosen global step on (a diverging run, on purpose)."""

    name = "nan_after"
    output_based = True

    class Options(kdhub.Options):
        step: int = 0

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        value = (out.student_logits - out.teacher_logits).pow(2).mean(1)
        return value * float("nan") if out.step >= self.options.step else value


class RegisterNaN:
    @kdhub.hookimpl
    def kdhub_register_methods(self, register):
        register(NaNAfter)


@pytest.fixture
def nan_method(register_plugin):
    register_plugin(RegisterNaN(), "nan-after")


def diverging(tiny_config: dict, step: int) -> dict:
    return {
        **tiny_config,
        "epochs": 3,
        "teacher": {"name": "cnn", "options": {"width": 8}},
        "methods": [{"name": "nan_after", "options": {"step": step}}],
        "checkpoint": {"every": 1},
    }


def test_a_diverging_run_stops_failed_and_keeps_the_good_epochs(tiny_config, nan_method, mlflow_uri, capsys):
    # digits: 1,347 - 10 % validation = 1,213 training images, 19 steps per epoch; step 21 is epoch 2's 3rd
    config = diverging(tiny_config, step=21)
    config["tracking"] = {**config["tracking"], "run_name": "diverges"}
    path = Path(tiny_config["tracking"]["uri"].removeprefix("sqlite:///")).parent / "diverges.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdhub: error: training diverged: loss term 'nan_after' became non-finite at epoch 2")
    assert "step 3 of 19 (global step 21)" in err
    assert "the checkpoints of epochs up to 1 are kept" in err
    assert "\n" not in err
    client = mlflow.MlflowClient(mlflow_uri)
    failed = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id], "attributes.run_name = 'diverges'"
    )[0]
    assert failed.info.status == "FAILED"
    assert "training diverged" in failed.data.tags["kdhub.failure"]
    assert [m.step for m in client.get_metric_history(failed.info.run_id, "loss/total")] == [1]
    files = {a.path for a in client.list_artifacts(failed.info.run_id, "checkpoints")}
    assert "checkpoints/epoch_001.pt" in files
    assert "checkpoints/last.pt" in files
    assert "checkpoints/final.pt" not in files
    assert "checkpoints/epoch_002.pt" not in files


def test_divergence_is_found_between_checks_without_a_sync_per_step(tiny_config, nan_method):
    """With checks every 5 steps the run still names the first bad step (the flag is accumulated on the device)."""
    config = diverging(tiny_config, step=2)
    config["train"] = {**config["train"], "finite_check_steps": 5}
    with pytest.raises(kdhub.DivergedError, match=r"epoch 1, step 3 of 19 \(global step 2\); no epoch had finished"):
        run(config, track=False)
    config["train"]["finite_check_steps"] = 0  # only at the end of the epoch: the same step is named
    with pytest.raises(kdhub.DivergedError, match=r"epoch 1, step 3 of 19"):
        run(config, track=False)


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDHUB_HEARTBEAT_SECONDS": "0.5", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "kdhub.cli", *args], env=env, text=True, **kw)


def _wait_for_epoch(client: mlflow.MlflowClient, name: str, epoch: int, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        experiment = client.get_experiment_by_name("signals")
        if experiment is not None:
            runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
            if runs and any(m.step >= epoch for m in client.get_metric_history(runs[0].info.run_id, "loss/total")):
                return runs[0].info.run_id
        time.sleep(0.3)
    raise AssertionError(f"run {name} did not reach epoch {epoch}")


@pytest.fixture
def long_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'signals.db'}"
    config = {
        "epochs": 60,
        "data": {"name": "digits", "batch_size": 256},
        "student": {"name": "cnn", "options": {"width": 4, "depth": 1}},
        "metrics": ["accuracy"],
        "train": {"progress": False},
        "tracking": {"uri": uri, "experiment": "signals", "run_name": "long"},
    }
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(config))
    Tracker(uri, "signals")  # create the store first: the test polls it while the run's process writes
    return path, uri


def test_sigterm_ends_the_run_killed_and_resumable(long_run):
    path, uri = long_run
    proc = _cli(["run", str(path)], stderr=subprocess.PIPE)
    client = mlflow.MlflowClient(uri)
    run_id = _wait_for_epoch(client, "long", 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert f"terminated (SIGTERM); run {run_id} is KILLED; resume with: kdhub run --resume {run_id}" in err
    assert "Traceback" not in err
    info = client.get_run(run_id)
    assert info.info.status == "KILLED"
    assert "SIGTERM" in info.data.tags["kdhub.failure"]
    assert f"kdhub run --resume {run_id}" in info.data.tags["kdhub.failure"]


def test_a_run_killed_with_sigkill_is_listed_stale_and_taken_over(long_run, capsys):
    path, uri = long_run
    proc = _cli(["run", str(path), "--set", "epochs=12"])
    client = mlflow.MlflowClient(uri)
    run_id = _wait_for_epoch(client, "long", 1)
    # while it trains it is alive: resuming it is refused
    assert main(["run", "--resume", run_id, "--tracking-uri", uri]) == 2
    assert "is still running" in capsys.readouterr().err
    proc.kill()
    proc.wait(timeout=30)
    assert client.get_run(run_id).info.status == "RUNNING"  # SIGKILL leaves no chance to say otherwise
    assert main(["runs", "--stale", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert run_id in out
    assert "that process is gone" in out
    assert main(["run", "--resume", run_id, "--tracking-uri", uri]) == 0
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss/total"))
    assert steps == list(range(1, 13))
    assert main(["run", "--resume", run_id, "--tracking-uri", uri]) == 2  # FINISHED: nothing to resume
    assert "the run already FINISHED" in capsys.readouterr().err


def test_a_run_stopped_before_its_first_checkpoint_restarts_from_scratch(tiny_config, mlflow_uri):
    class StopAtStart:
        @kdhub.hookimpl
        def kdhub_run_started(self, run):
            raise KeyboardInterrupt("stopped before the first epoch")

    with registered(StopAtStart(), "stop-at-start"), pytest.raises(KeyboardInterrupt):
        run(tiny_config)
    client = mlflow.MlflowClient(mlflow_uri)
    killed = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id], "attributes.status = 'KILLED'", max_results=1
    )[0]
    resumed = run(tiny_config, resume_run_id=killed.info.run_id)
    assert resumed.run_id == killed.info.run_id
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(resumed.run_id, "loss/total")) == [1, 2]
