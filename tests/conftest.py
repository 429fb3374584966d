"""Shared fixtures: a temporary MLflow store and a tiny real run config on the digits data."""

from __future__ import annotations

import os

import pytest
import torch

# One thread: the models in the tests are small, and threading overhead dominates on 2 shared cores.
torch.set_num_threads(1)
os.environ.setdefault("KDHUB_THREADS", "1")  # runs set their own thread count (train.threads); keep it at one
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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
