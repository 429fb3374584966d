"""The run list's "Accuracy" view: a saved view of the MLflow UI that kdhub writes into the experiments it trains in."""

import json

import mlflow

from kdhub.engine.loop import metric_key
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


def _columns(client, experiment_id: str) -> list[str]:
    return json.loads(json.loads(client.get_experiment(experiment_id).tags[VIEW_TAG])["state"])["selectedColumns"]


def test_a_later_run_adds_its_metrics_columns_to_kdhubs_own_view_only(mlflow_uri):
    client = mlflow.MlflowClient(mlflow_uri)
    teacher = Tracker(mlflow_uri, "tests-views-columns")
    teacher.start("teacher", {KIND_TAG: "train"})  # no metric declares a column
    teacher.finish("FINISHED")
    experiment = teacher.experiment_id
    assert _columns(client, experiment)[3:] == ["metrics.`test/acc_last`", "metrics.`test/acc_at_best_val`"]
    created = json.loads(client.get_experiment(experiment).tags[VIEW_TAG])["createdAt"]

    student = Tracker(mlflow_uri, "tests-views-columns")
    student.start("kd", {KIND_TAG: "train"}, view_columns=["test/agreement/pa"])
    student.finish("FINISHED")
    assert _columns(client, experiment)[3:] == [
        "metrics.`test/acc_last`",
        "metrics.`test/acc_at_best_val`",
        "metrics.`test/agreement/pa`",
    ]
    assert json.loads(client.get_experiment(experiment).tags[VIEW_TAG])["createdAt"] == created

    # a user reorders the columns in the UI and saves the view: kdhub adds nothing to it any more
    envelope = json.loads(client.get_experiment(experiment).tags[VIEW_TAG])
    state = json.loads(envelope["state"])
    state["selectedColumns"] = list(reversed(state["selectedColumns"]))
    edited = json.dumps({**envelope, "state": json.dumps(state)})
    client.set_experiment_tag(experiment, VIEW_TAG, edited)
    other = Tracker(mlflow_uri, "tests-views-columns")
    other.start("cka", {KIND_TAG: "train"}, view_columns=["test/cka/cka"])
    other.finish("FINISHED")
    assert client.get_experiment(experiment).tags[VIEW_TAG] == edited


def test_a_metrics_column_is_the_key_the_engine_logs_its_scalar_under():
    assert metric_key("test", "agreement", "pa") == "test/agreement/pa"
    assert metric_key("val", "accuracy", "acc") == "val/acc"  # the engine's own accuracy, logged once
    assert metric_key("train", "accuracy", "acc") == "train/accuracy/acc"
