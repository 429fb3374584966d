"""First use of a new SQLite store while another MLflow client creates it too: kdhub waits, never a config error."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import mlflow
import pytest

from kdhub.cli import main
from kdhub.contract.errors import KdhubError
from kdhub.tracking import firstuse, store
from kdhub.tracking.firstuse import StoreSetupError, is_setup_race, set_up_store


class CircularDependencyError(Exception):
    """What SQLAlchemy raises when MLflow's metadata is set up while another process creates the tables."""


def test_the_races_of_mlflows_schema_set_up_are_recognised():
    assert is_setup_race(CircularDependencyError("Circular dependency detected. ('runs', 'tags')"))
    assert is_setup_race(AttributeError("type object 'SqlMetric' has no attribute 'dimension_attributes'"))
    wrapped = RuntimeError("cannot use the store")
    wrapped.__cause__ = Exception("(sqlite3.OperationalError) table experiments already exists")
    assert is_setup_race(wrapped)
    assert not is_setup_race(PermissionError("Permission denied: '/x/mlflow.db'"))
    assert not is_setup_race(AttributeError("'NoneType' object has no attribute 'x'"))


def test_a_set_up_that_trips_over_another_client_is_tried_again():
    calls: list[int] = []

    def racing() -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise CircularDependencyError("Circular dependency detected")
        return "client"

    assert set_up_store(racing, "sqlite:///x.db") == "client"
    assert len(calls) == 3


def test_another_error_is_not_waited_for():
    def broken() -> None:
        raise PermissionError("Permission denied")

    start = time.monotonic()
    with pytest.raises(PermissionError):
        set_up_store(broken, "sqlite:///x.db")
    assert time.monotonic() - start < 1


def test_a_set_up_that_never_settles_is_a_store_failure_not_a_config_error(tmp_path, monkeypatch, capsys):
    def racing(self, *args, **kwargs):
        raise AttributeError("type object 'SqlMetric' has no attribute 'dimension_attributes'")

    monkeypatch.setattr(mlflow.MlflowClient, "search_experiments", racing)
    monkeypatch.setattr(firstuse, "SETUP_ATTEMPTS", 2)
    uri = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(StoreSetupError):
        store._client(uri)
    assert main(["demo", "--epochs", "1", "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kdhub: error: tracking store {uri}: its tables could not be set up in 2 tries")
    assert "tracking.uri" not in err
    assert err.count("\n") == 1


OTHER_CLIENT = """
import os, sys, time
import mlflow
go, uri = sys.argv[1], sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.005)
mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
"""


@pytest.mark.slow
def test_kdhub_and_another_mlflow_client_create_one_new_store_at_once(tmp_path):
    """A real race: without waiting, kdhub failed in 1 of 4 tries ("table ... already exists")."""
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    go = tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_CLIENT, str(go), uri], env=env, stderr=subprocess.DEVNULL, text=True
    )
    try:
        time.sleep(4)  # the other client has imported MLflow and waits for the signal
        go.touch()
        try:
            client = store._client(uri)
        except KdhubError as err:  # what this test guards against
            pytest.fail(f"kdhub failed on a store another client was creating: {err}")
        assert client.get_experiment_by_name("Default") is not None
    finally:  # the other client's fate is MLflow's (two plain MLflow clients can stall each other)
        try:
            other.wait(timeout=60)
        except subprocess.TimeoutExpired:
            other.kill()
            other.wait()


RACE = (
    "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest "
    "[SQL: INSERT INTO datasets (dataset_uuid, experiment_id, name, digest) VALUES (?, ?, ?, ?)] "
    "[parameters: [('68c2', 1, 'digits', 'b4ec')]]"
)


def _tracker_losing_the_dataset_race(tmp_path, monkeypatch, error: str, times: int):
    from kdhub.tracking.tracker import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="race")
    tracker.start("run", {})
    client = tracker.client._client  # the MlflowClient inside the SQLite store's retrying wrapper
    real = client.log_inputs
    calls = []

    def log_inputs(*args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            raise mlflow.exceptions.MlflowException(error)
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "log_inputs", log_inputs)
    return tracker, calls


SPLIT = {
    "name": "digits",
    "source": "sklearn.datasets.load_digits",
    "digest": "b4eccc3703c67e5b",
    "shape": [1, 8, 8],
    "dtype": "uint8",
    "num_samples": 10,
    "num_classes": 10,
}


def test_a_run_that_loses_the_race_to_create_a_shared_dataset_links_to_the_winners(tmp_path, monkeypatch):
    # a study's first runs log the same new dataset at once; MLflow's find-or-create is two statements
    tracker, calls = _tracker_losing_the_dataset_race(tmp_path, monkeypatch, RACE, times=1)
    tracker.datasets({"train": SPLIT})
    run = mlflow.MlflowClient(tracker.uri).get_run(tracker.run_id)
    assert len(calls) == 2
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["digits"]
    tracker.finish()


def test_another_store_error_while_logging_datasets_is_not_retried(tmp_path, monkeypatch):
    tracker, calls = _tracker_losing_the_dataset_race(tmp_path, monkeypatch, "disk I/O error", times=1)
    with pytest.raises(mlflow.exceptions.MlflowException, match="disk I/O"):
        tracker.datasets({"train": SPLIT})
    assert len(calls) == 1
    tracker.finish()


def test_a_failed_study_run_shows_one_short_line_without_the_sql():
    from kdhub.study.worker import ERROR_CHARS, _one_line

    line = _one_line(mlflow.exceptions.MlflowException(RACE + " (Background on this error at: x)"))
    assert line == (
        "MlflowException: (sqlite3.IntegrityError) UNIQUE constraint failed: "
        "datasets.experiment_id, datasets.name, datasets.digest"
    )
    long = _one_line(RuntimeError("x" * 5000 + "\nsecond line"))
    assert len(long) == ERROR_CHARS
    assert long.endswith("…")
    assert "\n" not in long
