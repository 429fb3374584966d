"""What studies need of the store: finding, reopening and updating the runs of a study."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kdhub.contract.limits import _sqlite_path
from kdhub.tracking.store import _client

if TYPE_CHECKING:
    pass  # config checks tracking's limits: no import at run time


# studies: finding and updating the runs of a study ------------------------------------------------


def store_exists(uri: str) -> bool:
    """False for a local store (SQLite file, ``mlruns`` folder) that was never created; True otherwise."""
    path = _sqlite_path(uri)
    if path is not None:
        return Path(path).exists()
    if uri.startswith("file:"):
        return Path(urlsplit(uri).path).exists()
    if "://" not in uri:
        return Path(uri).exists()
    return True


def find_runs(uri: str, experiment: str, filter_string: str = "") -> list[dict[str, Any]]:
    """Runs of an experiment matching an MLflow filter, oldest first, as plain dicts (none if it does not exist)."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs(
            [found.experiment_id],
            filter_string,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs += [
            {
                "run_id": r.info.run_id,
                "name": r.info.run_name,
                "status": r.info.status,
                "start_time": r.info.start_time,
                "end_time": r.info.end_time,
                "tags": dict(r.data.tags),
                "metrics": dict(r.data.metrics),
                "params": dict(r.data.params),
            }
            for r in page
        ]
        token = page.token
        if not token:
            return runs


def set_run_state(
    uri: str,
    run_id: str,
    status: str | None = None,
    tags: dict[str, str] | None = None,
    remove: list[str] | None = None,
) -> None:
    """Set tags, remove tags and end a run with ``status`` (FINISHED, FAILED, KILLED), or reopen it (RUNNING)."""
    client = _client(uri)
    existing = client.get_run(run_id).data.tags
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, str(value)[:5000])
    for key in remove or []:
        if key in existing:
            client.delete_tag(run_id, key)
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    elif status is not None:
        client.set_terminated(run_id, status=status)


def metric_max(uri: str, run_id: str, key: str) -> float:
    """The largest value a run logged for ``key`` over its steps (NaN if none)."""
    values = [m.value for m in _client(uri).get_metric_history(run_id, key) if math.isfinite(m.value)]
    return max(values) if values else math.nan


def delete_run(uri: str, run_id: str) -> None:
    """Move a run to MLflow's trash (``mlflow gc`` removes it for good)."""
    _client(uri).delete_run(run_id)
