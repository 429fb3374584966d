"""The run list a kdhub experiment offers in the MLflow UI: a saved view with the accuracy columns.

MLflow 3's runs table has no server-side default for its columns: a browser that has never opened
an experiment shows Source, Models and Dataset, then keeps what the user picks (in its local
storage). What the UI does read from the store is an experiment's *saved views*: experiment tags
``mlflow.sharedViewState.<key>`` holding ``{"name", "createdAt", "updatedAt", "state"}`` (``state``:
the JSON of the table's columns, sort and filters), listed under *Views* above the runs table and
opened by ``#/experiments/<id>/runs?viewStateShareKey=<key>``. kdhub writes one, "Accuracy", into
every experiment it trains in: the test accuracies, then the scalars the run's metrics declare as
columns (``Metric.columns``: agreement's ``pa``). A later run whose metrics declare more adds them
to the view while it is still the one kdhub wrote; a view the user changed in the UI is left alone
(a deleted one comes back with the next run). It also names ``test/acc_last`` the experiment's
primary metric (``mlflow.experiment.primaryMetric.name``), the chart the UI's chart view shows first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

VIEW_KEY = "kdhub-accuracy"
"""The saved view's key: ``?viewStateShareKey=kdhub-accuracy`` opens it."""
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_NAME = "Accuracy"
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"
PRIMARY_METRIC = "test/acc_last"
ACCURACY_COLUMNS = ("test/acc_last", "test/acc_at_best_val")
"""The engine's columns of the view: last and at-best-validation test accuracy (%); metrics add theirs."""
_DEFAULT_COLUMNS = ("Source", "Models", "Dataset")  # what the UI shows by default, kept


def view_state(metric_columns: Sequence[str] = ()) -> dict[str, Any]:
    """The UI state the view restores: the default attribute columns, the accuracies, then ``metric_columns``."""
    columns = [f"attributes.`{name}`" for name in _DEFAULT_COLUMNS]
    columns += [f"metrics.`{key}`" for key in dict.fromkeys([*ACCURACY_COLUMNS, *metric_columns])]
    return {"selectedColumns": columns}


def view_tag_value(metric_columns: Sequence[str] = (), now_ms: int | None = None, created_ms: int | None = None) -> str:
    """The experiment tag's value: the saved-view envelope the MLflow UI (3.17) reads."""
    stamp = int(time.time() * 1000) if now_ms is None else now_ms
    state = json.dumps(view_state(metric_columns))
    envelope = {"name": VIEW_NAME, "createdAt": created_ms or stamp, "updatedAt": stamp, "state": state}
    return json.dumps(envelope)


def _own_columns(value: str) -> tuple[list[str], int] | None:
    """The metric columns and creation time of a view exactly as kdhub writes it; None for one a user changed."""
    try:
        envelope = json.loads(value)
        state = json.loads(envelope["state"])
        columns = state["selectedColumns"]
        created = int(envelope["createdAt"])
    except (ValueError, TypeError, KeyError):
        return None
    metrics = [c[len("metrics.`") : -1] for c in columns[len(_DEFAULT_COLUMNS) :] if isinstance(c, str)]
    if envelope.get("name") != VIEW_NAME or set(state) != {"selectedColumns"}:
        return None
    if columns != view_state(metrics)["selectedColumns"]:  # reordered, removed or other kinds of columns
        return None
    return metrics, created


def ensure_accuracy_view(client: Any, experiment_id: str, metric_columns: Sequence[str] = ()) -> None:
    """Add the accuracy view (with ``metric_columns``) and the primary metric to an experiment without them;
    add new ``metric_columns`` to a view kdhub wrote and nobody changed since."""
    tags = client.get_experiment(experiment_id).tags
    current = tags.get(VIEW_TAG)
    if current is None:
        client.set_experiment_tag(experiment_id, VIEW_TAG, view_tag_value(metric_columns))
    else:
        own = _own_columns(current)
        if own is not None and not set(metric_columns) <= set(own[0]):
            columns = list(dict.fromkeys([*own[0], *metric_columns]))
            client.set_experiment_tag(experiment_id, VIEW_TAG, view_tag_value(columns, created_ms=own[1]))
    if PRIMARY_METRIC_TAG not in tags:
        client.set_experiment_tag(experiment_id, PRIMARY_METRIC_TAG, PRIMARY_METRIC)


def accuracy_view_url(experiment_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The UI address of an experiment's runs with the accuracy columns (``ui``: where ``mlflow ui`` listens)."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
