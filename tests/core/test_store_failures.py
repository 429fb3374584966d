"""The tracking store failing under a running run: one line, exit 1, nothing lost, resumable to the same end.

Each drill breaks the store at the layer where it breaks for real (MLflow's SQL store raising what
SQLite says, the artifact copy running out of space half-way, the database file moved away),
checks the one line the user reads, repairs the store and resumes the run: its final weights must
equal those of a run that was never interrupted, with no metric step logged twice.
"""

from __future__ import annotations

import errno
import shutil
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from kdhub.cli import main
from kdhub.tracking import failures
from kdhub.tracking.failures import resume_command, store_cause

EPOCHS = 3


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A store of its own (the drills move it away), a 3-epoch config file, and fast heartbeats."""
    monkeypatch.setenv("KDHUB_HEARTBEAT_SECONDS", "0.1")
    monkeypatch.chdir(tmp_path)  # the store's artifacts (./mlruns) stay in the test's folder
    monkeypatch.setattr(failures, "RETRY_SECONDS", 0.0)
    db = tmp_path / "store.db"
    uri = f"sqlite:///{db}"
    config = {
        "seed": 0,
        "epochs": EPOCHS,
        "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
        "student": {"name": "cnn", "options": {"width": 4, "depth": 1}},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"progress": False},
        "tracking": {"uri": uri, "experiment": "store-drills", "log_model": False},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"db": db, "uri": uri, "config": path}


def _final_weights(client: mlflow.MlflowClient, run_id: str, folder: Path) -> dict[str, torch.Tensor]:
    path = client.download_artifacts(run_id, "checkpoints/final.pt", str(folder))
    return torch.load(path, weights_only=True)["model"]


def _only_run(client: mlflow.MlflowClient) -> Any:
    runs = client.search_runs([client.get_experiment_by_name("store-drills").experiment_id])
    assert len(runs) == 1
    return runs[0]


_BASELINE: dict[str, dict[str, torch.Tensor]] = {}


def _uninterrupted(store: dict[str, Any], tmp_path: Path) -> dict[str, torch.Tensor]:
    """The same config run to its end in a store of its own (the weights every drill must reach; run once)."""
    if "weights" not in _BASELINE:
        _BASELINE["weights"] = _run_uninterrupted(store, tmp_path)
    return _BASELINE["weights"]


def _run_uninterrupted(store: dict[str, Any], tmp_path: Path) -> dict[str, torch.Tensor]:
    other = tmp_path / "baseline"
    other.mkdir()
    uri = f"sqlite:///{other / 'baseline.db'}"
    assert main(["run", str(store["config"]), "--tracking-uri", uri]) == 0
    client = mlflow.MlflowClient(uri)
    return _final_weights(client, _only_run(client).info.run_id, other / "weights")


def _one_line(err: str, run_id: str, uri: str, cause: str) -> None:
    line = err.strip()
    assert "\n" not in line, err
    assert "Traceback" not in err
    assert line.startswith(f"kdhub: error: tracking store {uri}: ")
    assert cause in line
    assert f"run {run_id} stopped" in line
    assert line.endswith(f"resume with: kdhub run --resume {run_id} --tracking-uri {uri}")


def _resume_to_the_same_end(store: dict[str, Any], run_id: str, tmp_path: Path, capsys: Any) -> None:
    time.sleep(0.5)  # the failed process's heartbeat (0.1 s) is stale: the run may be taken over
    assert main(["run", "--resume", run_id, "--tracking-uri", store["uri"]]) == 0, capsys.readouterr().err
    client = mlflow.MlflowClient(store["uri"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "kdhub.failure" not in run.data.tags
    steps = [m.step for m in client.get_metric_history(run_id, "loss/total")]
    assert sorted(steps) == list(range(1, EPOCHS + 1))  # no step logged twice
    resumed = _final_weights(client, run_id, tmp_path / "resumed")
    expected = _uninterrupted(store, tmp_path)
    assert resumed.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key


def _sql_error(text: str) -> MlflowException:
    """What MLflow's SQL store raises when SQLite refuses a write (its message carries SQLite's)."""
    return MlflowException(f"(sqlite3.OperationalError) {text}\n[SQL: INSERT INTO metrics ...]\n[parameters: ...]")


class Breakage:
    """A store that starts refusing writes at a chosen moment, and is repaired later."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, text: str, after_step: int) -> None:
        self.text, self.after_step, self.broken, self.repaired = text, after_step, False, False
        for name in ("log_batch", "set_tag", "update_run_info", "delete_tag", "log_inputs"):
            monkeypatch.setattr(SqlAlchemyStore, name, self._wrap(getattr(SqlAlchemyStore, name)))

    def _wrap(self, method: Any) -> Any:
        def call(store: Any, *args: Any, **kwargs: Any) -> Any:
            metrics = kwargs.get("metrics") or []
            if any(m.step > self.after_step for m in metrics):
                self.broken = True
            if self.broken and not self.repaired:
                raise _sql_error(self.text)
            return method(store, *args, **kwargs)

        return call


def test_a_full_store_ends_with_one_line_and_the_run_resumes_to_the_same_weights(store, tmp_path, monkeypatch, capsys):
    """SQLite's "database or disk is full" from epoch 2's metrics on, the failure bookkeeping included."""
    breakage = Breakage(monkeypatch, "database or disk is full", after_step=1)
    assert main(["run", str(store["config"])]) == 1
    out, err = capsys.readouterr()
    client = mlflow.MlflowClient(store["uri"])
    run_id = _only_run(client).info.run_id
    assert f"run {run_id} started" in out
    _one_line(err, run_id, store["uri"], "No space left on device")
    assert "left RUNNING" in err  # the disk was still full when the run was to be marked FAILED
    assert client.get_run(run_id).info.status == "RUNNING"
    breakage.repaired = True  # space freed
    time.sleep(0.5)
    assert main(["runs", "--stale", "--tracking-uri", store["uri"]]) == 0
    assert run_id in capsys.readouterr().out
    _resume_to_the_same_end(store, run_id, tmp_path, capsys)


def test_a_disk_that_fills_while_a_checkpoint_is_copied_keeps_the_last_good_one(store, tmp_path, monkeypatch, capsys):
    """``OSError(ENOSPC)`` half-way through copying epoch 2's last.pt into the artifact store."""
    copies: list[str] = []
    real_copy = shutil.copyfile

    def full(source: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
        copies.append(Path(target).name)
        if copies.count(".last.pt.kdhub-tmp") == 2 and len(copies) < 100:
            Path(target).write_bytes(Path(source).read_bytes()[:100])  # what fitted on the disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(source, target, *args, **kwargs)

    monkeypatch.setattr(failures.shutil, "copyfile", full)
    assert main(["run", str(store["config"])]) == 1
    err = capsys.readouterr().err
    client = mlflow.MlflowClient(store["uri"])
    run = _only_run(client)
    _one_line(err, run.info.run_id, store["uri"], "No space left on device")
    assert "marked FAILED" in err  # the database could still record it
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert (
        "the tracking store failed: No space left on device"
        in client.get_run(run.info.run_id).data.tags["kdhub.failure"]
    )
    assert not list(Path(run.info.artifact_uri.removeprefix("file://")).rglob("*.kdhub-tmp"))
    copies += ["space freed"] * 100
    assert main(["runs", "--status", "failed", "--tracking-uri", store["uri"]]) == 0
    listed = capsys.readouterr().out
    assert run.info.run_id in listed
    assert resume_command(run.info.run_id, store["uri"]) in listed
    _resume_to_the_same_end(store, run.info.run_id, tmp_path, capsys)


def test_a_store_moved_away_mid_run_is_named_and_the_run_resumes_once_it_is_back(store, tmp_path, monkeypatch, capsys):
    db, moved = store["db"], store["db"].with_suffix(".moved")
    real = SqlAlchemyStore.log_batch

    moves: list[Path] = []

    def move_after_epoch_1(self: Any, run_id: str, metrics: Any = (), *args: Any, **kwargs: Any) -> Any:
        if any(m.step == 2 for m in metrics) and not moves:
            moves.append(db.rename(moved))
        return real(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(SqlAlchemyStore, "log_batch", move_after_epoch_1)
    assert main(["run", str(store["config"])]) == 1
    err = capsys.readouterr().err
    assert not db.exists()
    moved.rename(db)  # the store is back where the run expects it
    run_id = _only_run(mlflow.MlflowClient(store["uri"])).info.run_id
    _one_line(err, run_id, store["uri"], f"store {db} no longer exists")
    _resume_to_the_same_end(store, run_id, tmp_path, capsys)


def test_a_read_only_store_ends_with_one_line_and_resumes(store, tmp_path, monkeypatch, capsys):
    breakage = Breakage(monkeypatch, "attempt to write a readonly database", after_step=2)
    assert main(["run", str(store["config"])]) == 1
    err = capsys.readouterr().err
    run_id = _only_run(mlflow.MlflowClient(store["uri"])).info.run_id
    _one_line(err, run_id, store["uri"], "the store is read-only")
    breakage.repaired = True
    _resume_to_the_same_end(store, run_id, tmp_path, capsys)


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (OSError(errno.EROFS, "Read-only file system", "/data/mlruns"), "read-only file system (/data/mlruns)"),
        (_sql_error("database or disk is full"), "No space left on device (the database or disk is full)"),
        (MlflowException("API request to http://h:5000/api failed: Max retries exceeded"), "does not answer"),
        (ValueError("a bug in a plugin"), None),
        (KeyboardInterrupt(), None),
    ],
)
def test_store_causes_are_named_in_words(error, cause, tmp_path):
    uri = f"sqlite:///{tmp_path / 'there.db'}"
    (tmp_path / "there.db").write_bytes(b"")
    found = store_cause(error, uri, any_origin=True)
    assert found == cause if cause is None else cause in (found or "")


def test_a_store_error_deep_in_a_chain_is_found(tmp_path):
    uri = f"sqlite:///{tmp_path / 'gone.db'}"  # no such file: the store has gone, whatever the error says
    outer = RuntimeError("logging the metrics failed")
    outer.__cause__ = OSError(errno.EIO, "Input/output error")
    assert (
        store_cause(outer, uri, any_origin=True) == f"store {tmp_path / 'gone.db'} no longer exists (moved or deleted)"
    )
    assert store_cause(RuntimeError("a plain bug"), uri, any_origin=True) is None


def test_a_full_disk_outside_the_store_is_not_blamed_on_it(tmp_path):
    """ENOSPC raised by the data or the work folder (not inside MLflow or kdhub.tracking) is not the store's."""
    uri = f"sqlite:///{tmp_path / 'there.db'}"
    (tmp_path / "there.db").write_bytes(b"")
    with pytest.raises(OSError, match="No space") as raised:
        raise OSError(errno.ENOSPC, "No space left on device")
    assert store_cause(raised.value, uri) is None
    assert store_cause(raised.value, uri, any_origin=True) == "No space left on device"
