"""Shared fixtures: a temporary MLflow store, a tiny real run config on the digits data, plugins registered for
one test, and a finished and a killed run to read back."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch

from kdhub.engine.runner import run
from kdhub.testing import interrupt_after, registered

# One thread: the models in the tests are small, and threading overhead dominates on 2 shared cores.
torch.set_num_threads(1)
os.environ.setdefault("KDHUB_THREADS", "1")  # runs set their own thread count (train.threads); keep it at one
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="session", autouse=True)
def _catalog_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The catalog cache of `kdhub list` / `show` / `--help` (kdhub.registry.cache) in a folder of the session's,
    never the user's, for the tests and the `kdhub` processes they start."""
    before = os.environ.get("KDHUB_CACHE_DIR")
    os.environ["KDHUB_CACHE_DIR"] = str(tmp_path_factory.mktemp("kdhub-cache"))
    yield
    if before is None:
        os.environ.pop("KDHUB_CACHE_DIR", None)
    else:
        os.environ["KDHUB_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite MLflow store for the whole session (creating a store costs a few seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tiny_config(mlflow_uri: str) -> dict:
    """A real 2-epoch run on digits with a small CNN: the smallest honest end-to-end run."""
    return {
        "seed": 0,
        "epochs": 2,
        "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
        "student": {"name": "cnn", "options": {"width": 8}},
        "optim": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "cosine"},
        "train": {"progress": False},
        "tracking": {"uri": mlflow_uri, "experiment": "tests", "log_model": False},
    }


@pytest.fixture
def register_plugin() -> Iterator[Callable[..., None]]:
    """``register_plugin(obj, name)``: ``obj``'s hook implementations are a plugin until the test ends
    (:func:`kdhub.testing.registered`; classes it registers are gone afterwards)."""
    with contextlib.ExitStack() as stack:
        yield lambda plugin, name=None: stack.enter_context(registered(plugin, name))


@pytest.fixture(scope="session")
def finished_and_killed_runs() -> Callable[[Path, str], dict[str, Any]]:
    """``finished_and_killed_runs(folder, experiment)``: a FINISHED run and a KILLED one (stopped after epoch
    1, with a last.pt) in a store of their own; returns the uri, both run ids, a client and the config."""

    def make(folder: Path, experiment: str) -> dict[str, Any]:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        config = {
            "student": {"name": "cnn", "options": {"width": 4}},
            "epochs": 2,
            "metrics": ["accuracy"],
            "train": {"progress": False},
            "tracking": {"uri": uri, "experiment": experiment},
        }
        finished = run(config).run_id
        with interrupt_after(1), pytest.raises(KeyboardInterrupt):
            run(config)
        client = mlflow.MlflowClient(uri)
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        killed = client.search_runs([experiment_id], "attributes.status = 'KILLED'")[0].info.run_id
        ids = {"finished": finished, "killed": killed}
        return {"uri": uri, **ids, "client": client, "config": config, "folder": folder}

    return make
