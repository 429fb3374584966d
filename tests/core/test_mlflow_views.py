"""The run list's "Accuracy" view: a saved view of the MLflow UI that kdhub writes into the experiments it trains in."""

import json

import mlflow

from kdhub.tracking import ACCURACY_COLUMNS, KIND_TAG, VIEW_KEY, Tracker, accuracy_view_url
from kdhub.tracking.views import PRIMARY_METRIC_TAG, VIEW_TAG, view_tag_value


def test_the_view_is_the_envelope_the_ui_reads():
    """MLflow 3.17's saved views: {name, createdAt (number), updatedAt, state (a JSON string)}."""
    envelope = json.loads(view_tag_value(now_ms=1_700_000_000_000))
    assert envelope["name"] == "Accuracy"
    assert envelope["createdAt"] == envelope["updatedAt"] == 1_700_000_000_000
    columns = json.loads(envelope["state"])["selectedColumns"]
    assert columns[:3] == ["attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`"]
    assert columns[3:] == [f"metrics.`{key}`" for key in ACCURACY_COLUMNS]
    assert "metrics.`test/acc_last`" in columns
    assert f"mlflow.sharedViewState.{VIEW_KEY}" == VIEW_TAG


def test_a_training_run_adds_the_view_once_and_keeps_an_edited_one(mlflow_uri):
    client = mlflow.MlflowClient(mlflow_uri)
    tracker = Tracker(mlflow_uri, "tests-views")
    tracker.start("first", {KIND_TAG: "train"})
    tracker.finish("FINISHED")
    tags = client.get_experiment(tracker.experiment_id).tags
    assert json.loads(tags[VIEW_TAG])["name"] == "Accuracy"
    assert tags[PRIMARY_METRIC_TAG] == "test/acc_last"
    client.set_experiment_tag(tracker.experiment_id, VIEW_TAG, "edited by a user")
    second = Tracker(mlflow_uri, "tests-views")
    second.start("second", {KIND_TAG: "train"})
    second.finish("FINISHED")
    assert client.get_experiment(tracker.experiment_id).tags[VIEW_TAG] == "edited by a user"


def test_other_runs_leave_their_experiment_alone(mlflow_uri):
    tracker = Tracker(mlflow_uri, "tests-views-compare")
    tracker.start("comparison", {KIND_TAG: "compare"})
    tracker.finish("FINISHED")
    assert VIEW_TAG not in mlflow.MlflowClient(mlflow_uri).get_experiment(tracker.experiment_id).tags


def test_the_url_opens_the_view():
    url = accuracy_view_url("7", "http://host:5000/")
    assert url == f"http://host:5000/#/experiments/7/runs?viewStateShareKey={VIEW_KEY}"
