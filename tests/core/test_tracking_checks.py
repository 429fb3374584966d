"""Tracking hardening: MLflow's limits before a run, safe first use of a store, resume rules."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import mlflow
import pytest
import yaml

from kdhub.commands.cli import main
from kdhub.contract.config import ConfigError
from kdhub.contract.config_loading import RESUMABLE, check_resume, parse_config
from kdhub.contract.errors import KdhubError
from kdhub.tracking import Tracker, tag_problem, uri_problem
from kdhub.tracking.store import _store_lock


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("ok/key-1.x y:z", "v", None),
        ("bad!", "v", "only letters, digits"),
        ("a" * 251, "v", "is 251 characters (MLflow allows 250)"),
        ("../escape", "v", "read as other paths"),
        ("/abs", "v", "read as other paths"),
        ("a//b", "v", "read as other paths"),
        ("k", "x" * 8001, "the value is 8,001 characters"),
        ("", "v", "non-empty string"),
    ],
)
def test_tag_limits_are_mlflows(key, value, expected):
    problem = tag_problem(key, value)
    assert (problem is None) if expected is None else (expected in problem)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///mlflow.db", None),
        ("http://localhost:5000", None),
        ("https://mlflow.example.com", None),
        ("postgresql://user@host/db", None),
        ("mlruns", "is not a tracking URI"),
        ("file:///tmp/mlruns", "is not a tracking URI"),
        ("ftp://x/y", "unsupported scheme 'ftp'"),
        ("http://", "names no server"),
        ("sqlite:///", "in-memory database"),
        ("sqlite://relative.db", "a SQLite URI is sqlite:///"),
    ],
)
def test_uri_problems(uri, expected):
    problem = uri_problem(uri)
    assert (problem is None) if expected is None else (expected in problem)


def test_the_store_lock_serialises_first_use(tmp_path):
    """A second user of a new store waits until the first one has created (migrated) it."""
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    order: list[str] = []

    def second() -> None:
        with _store_lock(uri):
            order.append("second")

    with _store_lock(uri):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        order.append("first done")
    thread.join(timeout=30)
    assert order == ["first done", "second"]
    assert (tmp_path / "new.db.lock").exists()


@pytest.mark.slow
def test_four_runs_started_at_once_on_a_new_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'race.db'}"
    code = "import sys; from kdhub.tracking import Tracker; print(Tracker(sys.argv[1], 'race').start('r', {}))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert [r[0] for r in results] == [0, 0, 0, 0], [r[1][-500:] for r in results]
    assert (
        len(
            mlflow.MlflowClient(uri).search_runs(
                [mlflow.MlflowClient(uri).get_experiment_by_name("race").experiment_id]
            )
        )
        == 4
    )


def test_an_experiment_created_meanwhile_is_used(tmp_path, monkeypatch, mlflow_uri):
    tracker = Tracker(mlflow_uri, "created-meanwhile")
    real_create = tracker.client.create_experiment

    def lose_the_race(name, *args, **kwargs):
        real_create(name)  # another process wins ...
        raise mlflow.exceptions.MlflowException("RESOURCE_ALREADY_EXISTS")  # ... and this one is told

    monkeypatch.setattr(tracker.client, "create_experiment", lose_the_race)
    run_id = tracker.start("r", {})
    assert tracker.client.get_run(run_id).info.experiment_id == (
        tracker.client.get_experiment_by_name("created-meanwhile").experiment_id
    )


# resume ---------------------------------------------------------------------------------------------


def test_check_resume_allows_only_the_resumable_keys():
    logged = parse_config({"student": "cnn", "epochs": 5}).model_dump(mode="json")
    fine = parse_config(
        {
            "student": "cnn",
            "epochs": 8,
            "train": {"progress": False, "device": "cpu", "eval_every": 2},
            "checkpoint": {"every": 2, "resume_every": 2},
            "tracking": {"uri": "sqlite:///elsewhere.db", "log_checkpoints": False},
        }
    )
    check_resume(fine, logged, "abc")
    assert "epochs" in RESUMABLE
    for change, key in [
        ({"optim": {"lr": 0.1}}, "optim.lr (0.05 -> 0.1)"),
        ({"student": "resnet8"}, "student.name (cnn -> resnet8)"),
        ({"teacher": "cnn", "methods": ["kd"]}, "teacher (null -> {name: cnn"),
        ({"data": {"batch_size": 32}}, "data.batch_size (64 -> 32)"),
        ({"tracking": {"experiment": "other"}}, "tracking.experiment"),
    ]:
        with pytest.raises(ConfigError, match="start a new run instead") as raised:
            check_resume(parse_config({"student": "cnn", "epochs": 5, **change}), logged, "abc")
        assert f"--resume abc: the config changes {key}" in str(raised.value)
    with pytest.raises(ConfigError, match="epochs 4 is fewer than the run's 5"):
        check_resume(parse_config({"student": "cnn", "epochs": 4}), logged, "abc")


@pytest.fixture(scope="module")
def store(tmp_path_factory, finished_and_killed_runs):
    return finished_and_killed_runs(tmp_path_factory.mktemp("resume"), "resume-checks")


def test_resuming_a_finished_run_is_refused(capsys, store):
    before = store["client"].get_run(store["finished"])
    assert main(["run", "--resume", store["finished"], "--tracking-uri", store["uri"]]) == 2
    err = capsys.readouterr().err
    assert f"--resume {store['finished']}: the run already FINISHED, there is nothing to resume" in err
    after = store["client"].get_run(store["finished"])
    assert after.info.status == "FINISHED"
    assert after.info.end_time == before.info.end_time
    with pytest.raises(KdhubError, match="already FINISHED"):  # the API refuses too
        Tracker(store["uri"], "resume-checks").start("x", {}, resume_run_id=store["finished"])


def test_resuming_with_a_changed_config_is_refused(capsys, store, tmp_path):
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({**store["config"], "optim": {"lr": 0.1}}))
    assert main(["run", str(changed), "--resume", store["killed"]]) == 2
    assert "the config changes optim.lr (0.05 -> 0.1)" in capsys.readouterr().err
    argv = ["run", "--resume", store["killed"], "--tracking-uri", store["uri"]]
    assert main([*argv, "--set", "student.options.width=8"]) == 2
    assert "the config changes student.options.width (4 -> 8)" in capsys.readouterr().err
    assert main([*argv, "--set", "epochs=1"]) == 2
    assert "epochs 1 is fewer than the run's 2" in capsys.readouterr().err
    assert main(["run", "--resume", "not/a/run"]) == 2
    assert "not an MLflow run id" in capsys.readouterr().err
    assert main(["run", "--resume", store["killed"], "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "there is no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
    assert store["client"].get_run(store["killed"]).info.status == "KILLED"


def test_a_resumed_run_that_finishes_loses_its_failure_tag(capsys, store):
    client, killed = store["client"], store["killed"]
    assert "KeyboardInterrupt" in client.get_run(killed).data.tags["kdhub.failure"]
    code = main(["run", "--resume", killed, "--tracking-uri", store["uri"], "--set", "epochs=3"])
    assert code == 0, capsys.readouterr().err
    resumed = client.get_run(killed)
    assert resumed.info.status == "FINISHED"
    assert "kdhub.failure" not in resumed.data.tags
    assert resumed.data.tags["kdhub.resumed"] == "true"
