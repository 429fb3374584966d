"""The run list a kdhub experiment offers in the MLflow UI: a saved view with the accuracy columns.

MLflow 3's runs table has no server-side default for its columns: a browser that has never opened
an experiment shows Source, Models and Dataset, then keeps what the user picks (in its local
storage). What the UI does read from the store is an experiment's *saved views*: experiment tags
``mlflow.sharedViewState.<key>`` holding ``{"name", "createdAt", "updatedAt", "state"}`` (``state``:
the JSON of the table's columns, sort and filters), listed under *Views* above the runs table and
opened by ``#/experiments/<id>/runs?viewStateShareKey=<key>``. kdhub writes one, "Accuracy", with
the test-accuracy and agreement columns, into every experiment it trains in, unless the experiment
has it already (a view the user edited is left alone; a deleted one comes back with the next run).
It also names ``test/acc_last`` the experiment's primary metric
(``mlflow.experiment.primaryMetric.name``), the chart the UI's chart view shows first.
"""

from __future__ import annotations

import json
import time
from typing import Any

VIEW_KEY = "kdhub-accuracy"
"""The saved view's key: ``?viewStateShareKey=kdhub-accuracy`` opens it."""
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_NAME = "Accuracy"
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"
PRIMARY_METRIC = "test/acc_last"
ACCURACY_COLUMNS = ("test/acc_last", "test/acc_at_best_val", "test/agreement/pa")
"""The metric columns of the view: last and at-best-validation test accuracy, agreement with the teacher (%)."""
_DEFAULT_COLUMNS = ("Source", "Models", "Dataset")  # what the UI shows by default, kept


def view_state() -> dict[str, Any]:
    """The UI state the view restores: the default attribute columns, then the accuracy metrics."""
    columns = [f"attributes.`{name}`" for name in _DEFAULT_COLUMNS]
    columns += [f"metrics.`{key}`" for key in ACCURACY_COLUMNS]
    return {"selectedColumns": columns}


def view_tag_value(now_ms: int | None = None) -> str:
    """The experiment tag's value: the saved-view envelope the MLflow UI (3.17) reads."""
    stamp = int(time.time() * 1000) if now_ms is None else now_ms
    envelope = {"name": VIEW_NAME, "createdAt": stamp, "updatedAt": stamp, "state": json.dumps(view_state())}
    return json.dumps(envelope)


def ensure_accuracy_view(client: Any, experiment_id: str) -> None:
    """Add the accuracy view and the primary metric to an experiment that has neither set."""
    tags = client.get_experiment(experiment_id).tags
    if VIEW_TAG not in tags:
        client.set_experiment_tag(experiment_id, VIEW_TAG, view_tag_value())
    if PRIMARY_METRIC_TAG not in tags:
        client.set_experiment_tag(experiment_id, PRIMARY_METRIC_TAG, PRIMARY_METRIC)


def accuracy_view_url(experiment_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The UI address of an experiment's runs with the accuracy columns (``ui``: where ``mlflow ui`` listens)."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
