"""A run says its own id: when it starts, in every interruption line, and in ``kdhub runs --status``."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import pytest
import yaml

import kdhub
from kdhub.cli import main
from kdhub.contract.errors import Terminated
from kdhub.testing import interrupt_after
from kdhub.tracking.failures import interrupted_line, resume_command, run_started_line


@pytest.fixture
def config_file(tiny_config: dict, tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**tiny_config, "epochs": 1}))
    return path


class _Record:
    def __init__(self, capsys: Any) -> None:
        self.capsys = capsys
        self.seen: Any = None

    @kdhub.hookimpl
    def kdhub_epoch_ended(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        if self.seen is None:
            self.seen = (run.run_id, self.capsys.readouterr().out)


def test_kdhub_run_prints_its_id_before_the_first_epoch(config_file, capsys, mlflow_uri, register_plugin):
    record = _Record(capsys)
    register_plugin(record, "record-output")
    assert main(["run", str(config_file)]) == 0
    run_id, before_first_epoch_ended = record.seen
    assert f"run {run_id} started in experiment 'tests' of {mlflow_uri}" in before_first_epoch_ended


def test_the_run_started_line_links_the_run_page_on_a_server():
    tracker = SimpleNamespace(run_id="abc", experiment="e", experiment_id="7", uri="http://mlflow:5000/")
    line = run_started_line(tracker, resumed=True)
    assert (
        line == "run abc resumed in experiment 'e' of http://mlflow:5000/; http://mlflow:5000/#/experiments/7/runs/abc"
    )


def test_an_interrupted_run_names_its_id_in_the_resume_command(config_file, capsys, mlflow_uri):
    with interrupt_after(1, Terminated("terminated by SIGTERM")):
        assert main(["run", str(config_file)]) == 143
    out, err = capsys.readouterr()
    run_id = out.split()[1]
    assert err.strip() == f"kdhub: terminated (SIGTERM); run {run_id} is KILLED; resume with: " + resume_command(
        run_id, mlflow_uri
    )
    assert "RUN_ID" not in err
    assert mlflow.MlflowClient(mlflow_uri).get_run(run_id).info.status == "KILLED"
    # newest first, with the command that resumes it
    assert main(["runs", "--status", "killed,failed", "--tracking-uri", mlflow_uri]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"{run_id}  KILLED")
    assert first.endswith(f"resume: {resume_command(run_id, mlflow_uri)}")
    assert main(["run", "--resume", run_id, "--tracking-uri", mlflow_uri]) == 0
    assert main(["runs", "--status", "finished", "--tracking-uri", mlflow_uri]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(run_id)]
    assert listed == [f"{run_id}  FINISHED  cnn-digits-s0"]  # nothing to resume


def test_an_interruption_before_any_run_exists_says_how_to_continue():
    line = interrupted_line(Terminated("terminated by SIGTERM"))
    assert "run the study again" in line
    assert "RUN_ID" not in line


class _LateSignal:
    @kdhub.hookimpl
    def kdhub_run_finished(self, run: Any, status: str, error: BaseException | None) -> None:
        if status == "FINISHED":
            os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's stop arrives as the run ends


def test_a_sigterm_after_the_run_finished_does_not_make_it_killed(config_file, capsys, mlflow_uri, register_plugin):
    register_plugin(_LateSignal(), "late-signal")
    assert main(["run", str(config_file)]) == 0
    out, err = capsys.readouterr()
    run_id = out.split()[1]
    assert "terminated" not in err
    assert mlflow.MlflowClient(mlflow_uri).get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        (
            "kiled",
            "--status: unknown run state 'kiled' (running, scheduled, finished, failed, killed, all);"
            " did you mean killed?",
        ),
        (",", "--status: give one or more of RUNNING, SCHEDULED, FINISHED, FAILED, KILLED (comma separated) or all"),
    ],
)
def test_a_bad_status_is_one_line(argument, message, capsys, mlflow_uri):
    assert main(["runs", "--status", argument, "--tracking-uri", mlflow_uri]) == 2
    assert capsys.readouterr().err == f"kdhub: error: {message}\n"
