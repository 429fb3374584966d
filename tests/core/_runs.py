"""Runs that several test modules start from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pytest

from kdhub.engine.runner import run
from kdhub.testing import interrupt_after


def finished_and_killed_runs(folder: Path, experiment: str) -> dict[str, Any]:
    """A FINISHED run and a KILLED one (stopped after epoch 1, with a last.pt) in a store of their own."""
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
    return {"uri": uri, "finished": finished, "killed": killed, "client": client, "config": config, "folder": folder}
