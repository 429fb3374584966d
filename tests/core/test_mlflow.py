"""A kdhub run as an MLflow citizen: datasets, the student as a model, registry, description, export, evaluate."""

import json
import subprocess

import mlflow
import numpy as np
import pytest
import torch

import kdhub
from kdhub.commands.cli import main
from kdhub.contract.config_loading import parse_config
from kdhub.contract.dataset import DataBundle, TensorSplit
from kdhub.engine.data import DeviceData, digest
from kdhub.engine.runner import run
from kdhub.registry.loading import get_registry
from kdhub.tracking import (
    VIEW_KEY,
    accuracy_view_url,
    command_line,
    load_table,
    model_label,
    resolve_artifact,
    run_params,
    run_tags,
    safe_metric_name,
    study_run_tags,
)

MODEL = "tests-digits-cnn"
EXPERIMENT = "tests-mlflow"


def digits_data(seed: int = 0, val_fraction: float = 0.1) -> DeviceData:
    bundle = get_registry().create("dataset", "digits").load()
    return DeviceData(bundle, torch.device("cpu"), val_fraction, seed, name="digits")


@pytest.fixture(scope="module")
def student_run(mlflow_uri):
    """A 2-epoch digits run that logs its student as an MLflow model and registers it."""
    config = {
        "seed": 0,
        "epochs": 2,
        "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
        "student": {"name": "cnn", "options": {"width": 8}},
        "train": {"progress": False},
        "tracking": {"uri": mlflow_uri, "experiment": EXPERIMENT, "run_name": "student", "register": MODEL},
    }
    return run(config)


@pytest.fixture(scope="module")
def client(mlflow_uri):
    return mlflow.MlflowClient(mlflow_uri)


def test_describe_has_the_protocol_schema_and_content_digests():
    data = digits_data()
    for split in ("train", "val", "test"):
        info = data.describe(split)
        keys = {"name", "source", "digest", "num_samples", "shape", "num_classes"}
        assert set(info) == (keys | {"indices_digest"} if split == "val" else keys)
        assert info["name"] == "digits"
        assert info["source"] == "sklearn.datasets.load_digits"
        assert len(info["digest"]) == 16
        int(info["digest"], 16)
        assert info["num_samples"] == data.size(split)
        assert info["shape"] == [1, 8, 8]
        assert info["num_classes"] == 10
        assert info["digest"] == digest(data.splits[split].images, data.splits[split].labels)
    # the held-out indices are the seed's: same seed, same indices digest; another seed, another
    assert digits_data(0).describe("val")["indices_digest"] == data.describe("val")["indices_digest"]
    assert digits_data(1).describe("val")["indices_digest"] != data.describe("val")["indices_digest"]
    assert data.describe("val")["indices_digest"] == digest(data.held_out)
    # content, not identity: one changed pixel changes the digest
    bundle = DataBundle(
        train=TensorSplit(torch.zeros((4, 1, 2, 2), dtype=torch.uint8), torch.arange(4) % 2),
        test=TensorSplit(torch.zeros((2, 1, 2, 2), dtype=torch.uint8), torch.arange(2)),
        num_classes=2,
        mean=(0.5,),
        std=(0.5,),
    )
    before = DeviceData(bundle, torch.device("cpu"), 0.0, 0).describe("test")["digest"]
    bundle.test.images[1, 0, 1, 1] = 1
    assert DeviceData(bundle, torch.device("cpu"), 0.0, 0).describe("test")["digest"] != before


def test_the_splits_are_dataset_inputs_with_their_context(student_run, client):
    inputs = client.get_run(student_run.run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}
    assert set(by_context) == {"train", "val", "test"}
    data = digits_data()
    for split, dataset in by_context.items():
        info = data.describe(split)
        assert dataset.name == "digits"
        assert dataset.digest == info["digest"]
        profile = json.loads(dataset.profile)
        assert profile["num_samples"] == info["num_samples"]
        assert json.loads(dataset.source)["tags"]["loader"] == "sklearn.datasets.load_digits"
        features = json.loads(json.loads(dataset.schema)["mlflow_tensorspec"]["features"])
        assert features[0]["tensor-spec"]["shape"] == [-1, 1, 8, 8]
    assert json.loads(by_context["val"].profile)["indices_digest"] == data.describe("val")["indices_digest"]


def test_the_logged_model_reproduces_the_test_logits(student_run, client):
    data = digits_data()
    images = data.normalise(data.splits["test"].images)
    with torch.no_grad():
        expected = student_run.student.cpu().eval()(images).numpy()
    model_id = client.get_run(student_run.run_id).outputs.model_outputs[0].model_id
    uri = f"models:/{model_id}"
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
        net = mlflow.pytorch.load_model(uri)
    finally:
        mlflow.set_tracking_uri(None)
    np.testing.assert_allclose(pyfunc.predict(images.numpy()), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(net(images).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert (expected.argmax(1) == data.splits["test"].labels.numpy()).mean() * 100 == pytest.approx(
        student_run.last_acc
    )
    # the model is linked to the run and to its final metrics
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == student_run.run_id
    linked = {m.key: m.value for m in logged.metrics}
    assert linked["test/acc_last"] == pytest.approx(student_run.last_acc)
    assert len(logged.metrics) == len(linked)  # each metric once (MLflow's own copy is not made as well)
    # each split's metrics carry the split's dataset: the model page's "Datasets used"
    inputs = client.get_run(student_run.run_id).inputs.dataset_inputs
    digests = {t.value: i.dataset.digest for i in inputs for t in i.tags if t.key == "mlflow.data.context"}
    datasets = {m.key: (m.dataset_name, m.dataset_digest) for m in logged.metrics}
    assert datasets["test/acc_last"] == ("digits", digests["test"])
    assert datasets["val/acc"] == ("digits", digests["val"])
    assert datasets["train/acc"] == ("digits", digests["train"])
    assert datasets["loss/total"] == (None, None)  # no split: no dataset
    assert [o.model_id for o in client.get_run(student_run.run_id).outputs.model_outputs] == [model_id]
    assert len(client.get_metric_history(student_run.run_id, "test/acc_last")) == 1  # not logged on the run twice
    signature = pyfunc.metadata.signature.inputs.inputs[0]
    assert list(signature.shape) == [-1, 1, 8, 8]
    assert pyfunc.metadata.metadata["kdhub"]["name"] == "cnn"
    assert logged.tags["student"] == "cnn(width=8)"


def test_the_model_is_logged_with_kdhubs_requirements_without_scanning_the_environment(
    tiny_config, mlflow_uri, monkeypatch, tmp_path
):
    from mlflow.utils import environment, requirements_utils

    scans: list[int] = []
    real_scan = requirements_utils.importlib_metadata.packages_distributions

    def scan() -> dict:
        scans.append(1)
        return real_scan()

    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)  # as in a new process
    monkeypatch.setattr(requirements_utils.importlib_metadata, "packages_distributions", scan)
    check = environment.warn_dependency_requirement_mismatches
    tiny_config.update(epochs=1)
    tiny_config["tracking"]["log_model"] = True
    result = run(tiny_config)
    assert scans == []  # MLflow neither inferred nor checked the requirements against every distribution
    assert environment.warn_dependency_requirement_mismatches is check  # and its check is back for others
    client = mlflow.MlflowClient(mlflow_uri)
    model_id = client.get_run(result.run_id).outputs.model_outputs[0].model_id
    folder = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{client.get_logged_model(model_id).artifact_location}/requirements.txt",
        dst_path=str(tmp_path),
        tracking_uri=mlflow_uri,
    )
    with open(folder) as handle:
        requirements = handle.read().split()
    assert requirements == [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]


def test_a_callers_active_mlflow_run_does_not_take_the_model(tiny_config, mlflow_uri):
    """kdhub.run inside a caller's ``mlflow.start_run()``: the model is the kdhub run's output, not the caller's
    (MLflow then links it itself, without datasets on its metrics)."""
    tiny_config.update(epochs=1)
    tiny_config["tracking"]["log_model"] = True
    client = mlflow.MlflowClient(mlflow_uri)
    mlflow.set_tracking_uri(mlflow_uri)
    try:
        with mlflow.start_run(experiment_id=client.create_experiment("tests-caller")) as caller:
            result = run(tiny_config)
    finally:
        mlflow.set_tracking_uri(None)
    (output,) = client.get_run(result.run_id).outputs.model_outputs
    assert not client.get_run(caller.info.run_id).outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert logged.source_run_id == result.run_id
    assert {m.key: m.value for m in logged.metrics}["test/acc_last"] == pytest.approx(result.last_acc)


def test_a_model_trained_with_labels_only_is_not_called_a_student(student_run, client):
    model_id = client.get_run(student_run.run_id).outputs.model_outputs[0].model_id
    logged = client.get_logged_model(model_id)
    assert logged.name == "model"  # no method: a teacher or a baseline, not a student
    assert "labels only" in client.get_registered_model(MODEL).description


def test_registered_version_carries_tags_and_teaches_a_later_run(student_run, client, mlflow_uri, tmp_path):
    version = client.get_model_version(MODEL, "1")
    assert version.run_id == student_run.run_id
    tags = version.tags
    assert tags["teacher"] == "none"
    assert tags["method"] == "none"
    assert tags["policy"] == "constant"
    assert tags["dataset"] == "digits"
    assert tags["kdhub.version"]
    assert float(tags["test_acc"]) == pytest.approx(student_run.last_acc, abs=0.01)
    client.set_registered_model_alias(MODEL, "champion", "1")
    path = resolve_artifact(f"models:/{MODEL}@champion", mlflow_uri, tmp_path / "dl")
    assert torch.load(path, weights_only=True)["model_spec"]["name"] == "cnn"
    for reference in (f"models:/{MODEL}/1", f"models:/{MODEL}@champion"):
        config = {
            "epochs": 1,
            "data": {"name": "digits", "batch_size": 64},
            "student": {"name": "cnn", "options": {"width": 4}},
            "teacher": {"name": "cnn", "options": {"width": 8}, "weights": reference},
            "methods": ["kd"],
            "metrics": ["accuracy"],
            "train": {"progress": False},
            "tracking": {"uri": mlflow_uri, "experiment": EXPERIMENT, "log_model": False},
        }
        data = client.get_run(run(config).run_id).data
        # the registered student, measured again as this run's teacher, has its run's accuracy
        assert data.metrics["test/accuracy/teacher_acc"] == pytest.approx(student_run.last_acc)
        assert data.tags["kdhub.teacher_model"] == f"{MODEL}/1"
        assert data.tags["kdhub.teacher_run"] == student_run.run_id
        assert "#/experiments/" in data.tags["mlflow.note.content"]


def test_a_reference_to_a_missing_model_is_one_line(mlflow_uri, tmp_path):
    with pytest.raises(kdhub.KdhubError, match=r"models:/no-such-model/1: no registered model 'no-such-model' in"):
        resolve_artifact("models:/no-such-model/1", mlflow_uri, tmp_path / "dl")


def _write_config(path, config):
    import yaml

    path.write_text(yaml.safe_dump(config))
    return str(path)


def _finished_run_id(out: str) -> str:
    """The run id of ``kdhub run``'s last line (``run ID: test accuracy ...``)."""
    return out.strip().splitlines()[-1].split("run ", 1)[1].split(":")[0]


def test_train_register_alias_then_distil_from_the_alias_on_the_command_line(mlflow_uri, tmp_path, capsys):
    """The registry workflow end to end through ``kdhub run``: train and register a teacher, give its
    version an alias, distil from ``models:/NAME@ALIAS``; the new run records the version it resolved."""
    name = "tests-chain-teacher"
    common = {
        "epochs": 1,
        "data": {"name": "digits", "batch_size": 64},
        "train": {"progress": False},
    }
    teacher = {
        **common,
        "student": {"name": "cnn", "options": {"width": 8}},
        "tracking": {"experiment": EXPERIMENT, "register": name},
    }
    assert main(["run", _write_config(tmp_path / "t.yaml", teacher), "--tracking-uri", mlflow_uri]) == 0
    teacher_run = _finished_run_id(capsys.readouterr().out)
    client = mlflow.MlflowClient(mlflow_uri)
    (version,) = client.search_model_versions(f"name = '{name}'")
    client.set_registered_model_alias(name, "best", version.version)

    kd = {
        **common,
        "student": {"name": "cnn", "options": {"width": 4}},
        "teacher": {"name": "cnn", "options": {"width": 8}, "weights": f"models:/{name}@best"},
        "methods": ["kd"],
        "metrics": ["accuracy"],
        "tracking": {"experiment": EXPERIMENT, "register": "tests-chain-student"},
    }
    assert main(["run", _write_config(tmp_path / "kd.yaml", kd), "--tracking-uri", mlflow_uri]) == 0
    kd_run = _finished_run_id(capsys.readouterr().out)
    data = client.get_run(kd_run).data
    assert data.tags["kdhub.teacher_model"] == f"{name}/{version.version}"
    assert data.tags["kdhub.teacher_run"] == teacher_run
    assert data.params["teacher.weights"] == f"models:/{name}@best"
    assert f"(registered version `models:/{name}/{version.version}`)" in data.tags["mlflow.note.content"]
    # models named for what they are; registered models described for what they hold
    assert client.get_logged_model(client.get_run(teacher_run).outputs.model_outputs[0].model_id).name == "model"
    assert client.get_logged_model(client.get_run(kd_run).outputs.model_outputs[0].model_id).name == "student"
    assert client.get_registered_model(name).description.startswith("Models trained with labels only")
    assert client.get_registered_model("tests-chain-student").description.startswith("Students distilled")
    teacher_acc = client.get_run(teacher_run).data.metrics["test/acc_last"]
    assert data.metrics["test/accuracy/teacher_acc"] == pytest.approx(teacher_acc)

    # export and evaluate take the alias too
    out = tmp_path / "teacher.safetensors"
    argv = ["export", f"models:/{name}@best", "-f", "safetensors", "-o", str(out), "--tracking-uri", mlflow_uri]
    assert main(argv) == 0
    assert out.is_file()
    assert main(["evaluate", f"models:/{name}@best", "--data", "digits", "--tracking-uri", mlflow_uri]) == 0
    assert f"accuracy {teacher_acc:.2f} %" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("models:/{model}@nope", "registered model '{model}' has no alias 'nope' in {uri} (its aliases: "),
        ("models:/{model}/99", "registered model '{model}' has no version '99' in {uri} (its versions: 1"),
        ("models:/{model}/x", "registered model '{model}' has no version 'x'"),
        ("models:/tests-digits-cnm/1", "no registered model 'tests-digits-cnm' in {uri}; did you mean {model}?"),
        ("models:/m-0123456789abcdef", "no logged model 'm-0123456789abcdef' in {uri}"),
        ("models:/", "expected models:/NAME/VERSION, models:/NAME@ALIAS"),
        ("models:/{model}@", "expected models:/NAME/VERSION, models:/NAME@ALIAS"),
    ],
)
def test_a_missing_registered_name_version_or_alias_is_one_line_exit_2(
    reference, message, student_run, mlflow_uri, tmp_path, capsys
):
    reference, message = (t.format(model=MODEL, uri=mlflow_uri) for t in (reference, message))
    config = {
        "epochs": 1,
        "student": {"name": "cnn", "options": {"width": 4}},
        "teacher": {"name": "cnn", "options": {"width": 8}, "weights": reference},
        "methods": ["kd"],
        "tracking": {"experiment": EXPERIMENT},
    }
    path = _write_config(tmp_path / "kd.yaml", config)
    for argv in (
        ["run", path],
        ["export", reference, "-f", "safetensors", "-o", str(tmp_path / "x.st")],
        ["evaluate", reference, "--data", "digits"],
    ):
        assert main([*argv, "--tracking-uri", mlflow_uri]) == 2, argv
        err = capsys.readouterr().err
        assert message in err, err
        if argv[0] == "run":
            assert f"teacher.weights: {reference}: " in err
        assert len(err.strip().splitlines()) == 1, err


def test_a_models_reference_to_a_store_that_does_not_exist_is_refused(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["evaluate", "models:/x/1", "--data", "digits", "--tracking-uri", uri]) == 2
    assert "there is no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_the_run_is_described_with_its_command_and_commit(student_run, client):
    tags = client.get_run(student_run.run_id).data.tags
    note = tags["mlflow.note.content"]
    assert "Trains **cnn(width=8)** with cross-entropy only" in note
    assert "**digits**" in note
    assert "1,211 train / 136 val / 450 test" in note
    assert f"**{student_run.last_acc:.2f} %**" in note
    assert f"Registered as `models:/{MODEL}/1`" in note
    assert tags["mlflow.source.name"]
    assert tags["kdhub.command"]
    assert tags["kdhub.system.heartbeat"].endswith(" UTC")
    assert tags["kdhub.kind"] == "train"
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if head.returncode == 0:
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()


class _BranchyNet(torch.nn.Module):
    """A network with data-dependent control flow, which torch.export cannot trace."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(in_channels * 64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x.flatten(1))
        return logits if logits.sum() > 0 else -logits


class _BranchyModel(kdhub.Model):
    """A model with data-dependent control flow (tests only)."""

    name = "branchy_test"

    def build(self, num_classes: int, in_channels: int, image_size: int) -> torch.nn.Module:
        return _BranchyNet(num_classes, in_channels)


class _Branchy:
    @kdhub.hookimpl
    def kdhub_register_models(self, register):
        register(_BranchyModel)


def test_a_student_that_cannot_be_exported_fails_the_run_loudly_and_resumes_without_a_model(
    tiny_config, mlflow_uri, register_plugin
):
    from kdhub.contract.errors import KdhubError

    register_plugin(_Branchy(), "branchy")
    tiny_config.update(epochs=1, student={"name": "branchy_test"}, metrics=["accuracy"])
    tiny_config["tracking"]["log_model"] = True
    with pytest.raises(KdhubError, match=r"tracking\.log_model: the student branchy_test could not be logged"):
        run(tiny_config)
    client = mlflow.MlflowClient(mlflow_uri)
    failed = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id], "attributes.status = 'FAILED'", max_results=1
    )[0]
    reason = failed.data.tags["kdhub.failure"]
    assert "--set tracking.log_model=false" in reason
    assert "data-dependent" in reason or "GuardOnDataDependent" in reason, reason
    tiny_config["tracking"]["log_model"] = False
    resumed = run(tiny_config, resume_run_id=failed.info.run_id)
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    assert "test/acc_last" in client.get_run(resumed.run_id).data.metrics


def test_a_description_in_the_config_replaces_the_generated_one(tiny_config, mlflow_uri):
    tiny_config["epochs"] = 1
    tiny_config["tracking"]["description"] = "Baseline for the *ablation* table."
    result = run(tiny_config)
    tags = mlflow.MlflowClient(mlflow_uri).get_run(result.run_id).data.tags
    assert tags["mlflow.note.content"] == "Baseline for the *ablation* table."


def test_metric_names_say_what_they_mean(student_run, client):
    metrics = client.get_run(student_run.run_id).data.metrics
    assert metrics["test/acc_max_seen"] == pytest.approx(student_run.best_acc)
    assert metrics["best_val_epoch"] in (1, 2)
    assert "test/acc_at_best_val" in metrics
    assert metrics["policy/ce_weight"] == 1.0
    assert "policy/distill_factor" not in metrics  # no teacher: nothing to scale
    for old in ("test/acc_best", "best_epoch", "weight/kd", "weight/ce"):
        assert old not in metrics


def test_tables_are_mlflow_tables_and_older_json_tables_still_read(student_run, client, mlflow_uri):
    logged = json.loads(client.get_run(student_run.run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "tables/test/per_class_accuracy.json", "type": "table"} in logged
    table = load_table(student_run.run_id, "test/per_class_accuracy", mlflow_uri)
    assert table["class"] == list(range(10))
    # a table written the way kdhub did before (a plain JSON artifact) reads the same
    client.log_dict(
        student_run.run_id, {"columns": ["class", "student"], "data": [[0, 50.0], [1, None]]}, "tables/old.json"
    )
    old = load_table(student_run.run_id, "old", mlflow_uri)
    assert old["class"] == [0, 1]
    assert old["student"][0] == 50.0
    assert np.isnan(old["student"][1])


def test_mlflow_load_table_reads_a_run_table_as_docs_mlflow_md_shows(student_run, mlflow_uri):
    import mlflow.tracking.fluent

    run_id = student_run.run_id
    try:  # the exact calls of docs/mlflow.md
        mlflow.set_tracking_uri(mlflow_uri)
        mlflow.set_experiment(experiment_id=mlflow.get_run(run_id).info.experiment_id)
        table = mlflow.load_table("tables/test/per_class_accuracy.json", run_ids=[run_id], extra_columns=["run_id"])
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.tracking.fluent._active_experiment_id = None
    ours = load_table(run_id, "test/per_class_accuracy", mlflow_uri)
    assert list(table["class"]) == ours["class"] == list(range(10))
    np.testing.assert_allclose(table["student"], ours["student"])
    assert set(table["run_id"]) == {run_id}


def test_a_table_logged_twice_in_a_run_is_replaced(mlflow_uri):
    """A plugin that rewrites a table during a run (TLLM's curves) leaves the last version, not both appended."""
    from kdhub.tracking import Tracker

    tracker = Tracker(mlflow_uri, "tests-tables")
    run_id = tracker.start("rewrite", {})
    tracker.table("tllm_stopped", {"class": [1], "stopped_epoch": [5]})
    tracker.table("tllm_stopped", {"class": [1, 3], "stopped_epoch": [5, 6]})
    tracker.finish("FINISHED")
    assert load_table(run_id, "tllm_stopped", mlflow_uri) == {"class": [1, 3], "stopped_epoch": [5, 6]}


def test_figures_are_large_and_titled(student_run, client, tmp_path):
    import matplotlib.image

    path = client.download_artifacts(student_run.run_id, "figures/test/per_class_accuracy.png", str(tmp_path))
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width >= 1200
    assert height >= 600


def test_params_are_only_those_that_apply():
    registry = get_registry()
    from kdhub.registry.resolve import resolve_plugins

    sgd = parse_config({"student": "cnn", "schedule": {"name": "cosine"}})
    params = run_params(sgd, resolve_plugins(sgd, registry), device="cpu")
    assert params["train.device"] == "cpu"
    assert {"optim.momentum", "optim.nesterov", "schedule.min_lr", "schedule.warmup_epochs"} <= set(params)
    assert not {"optim.betas", "schedule.milestones", "schedule.gamma"} & set(params)
    adamw = parse_config({"student": "cnn", "optim": {"name": "adamw", "lr": 0.001}})
    params = run_params(adamw, resolve_plugins(adamw, registry))
    assert params["optim.betas"] == "[0.9, 0.999]"
    assert params["train.device"] == "auto"  # no device given: the config's
    assert {"schedule.milestones", "schedule.gamma"} <= set(params)
    assert not {"optim.momentum", "optim.nesterov", "schedule.min_lr"} & set(params)
    # a run without a method: no default policy and no ce_weight of 1 (they change nothing on it)
    assert not {"ce_weight", "policy.name"} & set(params)
    weighted = parse_config({"student": "cnn", "ce_weight": 0.5})
    assert run_params(weighted, resolve_plugins(weighted, registry))["ce_weight"] == "0.5"
    kd = parse_config({"student": "cnn", "teacher": "cnn", "methods": ["kd"]})
    params = run_params(kd, resolve_plugins(kd, registry))
    assert params["ce_weight"] == "1.0"
    assert params["policy.name"] == "constant"
    assert params["method.kd.temperature"] == "4.0"


def test_tags_name_models_with_options_and_only_used_plugin_distributions():
    config = parse_config(
        {
            "student": {"name": "cnn", "options": {"width": 4, "depth": 2}},
            "teacher": {"name": "cnn", "options": {"width": 16}, "weights": "runs:/abc123/checkpoints/final.pt"},
            "methods": ["kd"],
        }
    )
    tags = run_tags(config)
    assert tags["student"] == "cnn(width=4, depth=2)"
    assert tags["teacher"] == "cnn(width=16)"
    assert tags["kdhub.teacher_run"] == "abc123"
    assert not [k for k in tags if k.startswith("kdhub.plugin.")]  # only kdhub's own plugins
    config.methods[0].name = "cosine"  # the example plugin distribution kdhub-cosine
    assert run_tags(config)["kdhub.plugin.kdhub-cosine"]
    assert model_label(None) == "none"


def test_the_command_line_is_recorded_without_the_tracking_uri():
    argv = ["/venv/bin/kdhub", "run", "kd.yaml", "--tracking-uri", "https://u:secret@host", "--set", "seed=1"]
    assert command_line(argv) == "kdhub run kd.yaml --set seed=1"
    assert command_line(["/x/kdhub/cli.py", "study", "s.yaml", "--tracking-uri=sqlite:///a.db"]) == "kdhub study s.yaml"
    assert command_line(["train.py", "--lr", "0.1"]) == "train.py --lr 0.1"


def test_the_source_is_the_config_file_and_the_command_line_a_tag(tmp_path, monkeypatch):
    from kdhub.tracking import source_name

    monkeypatch.chdir(tmp_path)
    (tmp_path / "kd.yaml").write_text("student: cnn\n")
    argv = ["/venv/bin/kdhub", "run", "kd.yaml", "--set", "teacher.weights=runs:/abc/checkpoints/final.pt"]
    assert source_name(argv) == "kd.yaml"  # not final.pt, the last word of the command line
    assert source_name(["/venv/bin/kdhub", "demo"]) == "kdhub demo"
    assert source_name(["/venv/bin/kdhub", "run", "--resume", "0" * 32]) == f"kdhub run --resume {'0' * 32}"
    assert source_name(["/venv/bin/kdhub", "run", "missing.yaml"]) == "kdhub run missing.yaml"


def test_host_pid_and_a_readable_heartbeat_are_system_tags():
    from kdhub.tracking import HEARTBEAT_TAG, HOST_TAG, PID_TAG, heartbeat_stamp, liveness

    assert (HOST_TAG, PID_TAG, HEARTBEAT_TAG) == ("kdhub.system.host", "kdhub.system.pid", "kdhub.system.heartbeat")
    assert heartbeat_stamp(0) == "1970-01-01 00:00:00 UTC"
    now = 1_800_000_000.0
    fresh = {"tags": {HOST_TAG: "elsewhere", PID_TAG: "1", HEARTBEAT_TAG: heartbeat_stamp(now - 5)}}
    assert liveness(fresh, now) == (True, "pid 1 on elsewhere, last heartbeat 5 s ago")
    # runs written by earlier kdhub versions: kdhub.host / kdhub.pid / epoch seconds
    earlier = {"tags": {"kdhub.host": "elsewhere", "kdhub.pid": "1", "kdhub.heartbeat": str(int(now - 5))}}
    assert liveness(earlier, now) == liveness(fresh, now)
    assert liveness({"tags": {}}, now) == (False, "it has no heartbeat")


def test_study_child_tags_name_the_study_run_grid_point_and_seed():
    tags = study_run_tags("sweep", "kd", "temperature=4", 1, "p" * 32)
    assert tags == {
        "mlflow.parentRunId": "p" * 32,
        "kdhub.study": "sweep",
        "kdhub.study_run": "kd",
        "kdhub.grid": "temperature=4",
        "seed": "1",
    }
    assert study_run_tags("sweep", "teacher", "", 0, "p")["kdhub.grid"] == "none"


def test_safe_metric_names_stay_readable():
    assert safe_metric_name("compare/kd[temperature=1]/pearson_r") == "compare/kd temperature 1/pearson_r"
    assert safe_metric_name("compare/kd[temperature=1,alpha=0.5]/x") == "compare/kd temperature 1 alpha 0.5/x"
    assert safe_metric_name("a//b/./c:d") == "a/b/c_d"
    assert safe_metric_name("../x") == "x"


# export and evaluate ----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_onnx_torchscript_and_safetensors_reproduce_the_logits(student_run, mlflow_uri, tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    data = digits_data()
    images = data.normalise(data.splits["test"].images)
    with torch.no_grad():
        expected = student_run.student.cpu().eval()(images).numpy()
    base = [student_run.run_id, "--tracking-uri", mlflow_uri]

    assert main(["export", *base, "--format", "onnx", "--out", str(tmp_path / "s.onnx")]) == 0
    out = capsys.readouterr().out
    assert "max |logits - PyTorch|" in out
    session = onnxruntime.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"images": images.numpy()})[0], expected, rtol=1e-4, atol=1e-4)

    assert main(["export", *base, "-f", "torchscript", "-o", str(tmp_path / "s.pt")]) == 0
    scripted = torch.jit.load(str(tmp_path / "s.pt"))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(images).numpy(), expected, rtol=1e-5, atol=1e-5)

    assert main(["export", f"models:/{MODEL}/1", *base[1:], "-f", "safetensors", "-o", str(tmp_path / "s.st")]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "s.st"), "pt") as f:
        spec = json.loads(f.metadata()["kdhub_model_spec"])
        weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no __iter__)
    assert spec["name"] == "cnn"
    assert spec["normalization"]["mean"] == pytest.approx(list(data.bundle.mean))
    for key, value in student_run.student.state_dict().items():
        assert torch.equal(weights[key], value.cpu()), key


def test_evaluate_gives_the_runs_accuracy_and_logs_a_comparable_run(student_run, mlflow_uri, capsys):
    argv = ["evaluate", student_run.run_id, "--data", "digits", "--tracking-uri", mlflow_uri, "--log"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"accuracy {student_run.last_acc:.2f} %" in out
    run_id = out.rsplit("logged as MLflow run ", 1)[1].split()[0]
    logged = mlflow.MlflowClient(mlflow_uri).get_run(run_id)
    assert logged.data.tags["kdhub.kind"] == "evaluate"
    assert logged.data.tags["kdhub.evaluated_run"] == student_run.run_id
    assert logged.data.metrics["test/acc"] == pytest.approx(student_run.last_acc)
    assert load_table(run_id, "test/per_class_accuracy", mlflow_uri) == load_table(
        student_run.run_id, "test/per_class_accuracy", mlflow_uri
    )
    # the run's validation split, rebuilt from its seed and fraction
    argv = ["evaluate", student_run.run_id, "--data", "digits", "--split", "val", "--set", "data.val_fraction=0.1"]
    assert main([*argv, "--tracking-uri", mlflow_uri]) == 0
    assert digits_data().describe("val")["digest"] in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "{run}", "--format", "tflite"], "--format: unknown format 'tflite'"),
        (["export", "/no/such.pt", "--format", "onnx"], "/no/such.pt: no such checkpoint file"),
        (["export", "0" * 32, "--format", "onnx"], f"run {'0' * 32!r} not found"),
        (["export", "{config}", "--format", "onnx"], "not a kdhub checkpoint"),
        (["export", "{run}", "--format", "onnx", "--input-shape", "3,x"], "--input-shape: expected C,H,W"),
        (["export", "{run}", "--format", "onnx", "--out", "{tmp}"], "is a folder"),
        (["evaluate", "{run}", "--data", "digitz"], "unknown dataset 'digitz'; did you mean 'digits'"),
        (["evaluate", "{run}", "--data", "synthetic", "--set", "data.options.num_classes=5"], "5 classes, the model"),
        (
            ["evaluate", "{run}", "--data", "synthetic", "--set", "data.options.num_classes=10"],
            "images 3x32x32, the model was trained on 1x8x8",
        ),
        (["evaluate", "{run}", "--data", "digits", "--split", "val"], "no val split"),
        (["evaluate", "{run}", "--data", "digits", "--set", "dta.x=1"], "dta: unknown key"),
        (["evaluate", "{run}", "--data", "digits", "--set", "data.options.test_fraction=2"], "test_fraction"),
        (["evaluate", "{run}", "--data", "digits", "--split", "dev"], "--split: expected train, val or test"),
    ],
)
def test_export_and_evaluate_errors_are_one_line_exit_2(argv, message, student_run, mlflow_uri, tmp_path, capsys):
    config = tmp_path / "config.pt"
    torch.save({"not": "a checkpoint"}, config)
    values = {"run": student_run.run_id, "config": str(config), "tmp": str(tmp_path)}
    argv = [a.format(**values) for a in argv]
    assert main([*argv, "--tracking-uri", mlflow_uri]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1, err


def test_system_metrics_are_sampled_when_asked(tiny_config, mlflow_uri, monkeypatch):
    pytest.importorskip("psutil")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    tiny_config["tracking"]["system_metrics"] = True
    result = run(tiny_config)
    metrics = mlflow.MlflowClient(mlflow_uri).get_run(result.run_id).data.metrics
    assert any(k.startswith("system/cpu_utilization") for k in metrics), sorted(metrics)


# the demo's store -----------------------------------------------------------------------------------


def test_the_demo_registers_the_kd_student_and_its_load_hint_works(tmp_path, capsys):
    """``kdhub demo``: models named per role, the KD student registered, and the printed way to load it
    (pyfunc on raw digits, float32) gives the student's logits; a trainable module comes from its checkpoint."""
    from kdhub.commands.demo import demo
    from kdhub.registry.student import load_checkpoint, network_from_checkpoint

    uri = f"sqlite:///{tmp_path / 'demo.db'}"
    results = demo(epochs=1, tracking_uri=uri)
    out = capsys.readouterr().out
    client = mlflow.MlflowClient(uri)
    names = {
        key: client.get_logged_model(client.get_run(r.run_id).outputs.model_outputs[0].model_id).name
        for key, r in results.items()
    }
    roles = {"teacher": "teacher", "vanilla": "vanilla", "kd": "student"}
    assert names == {key: roles[key.split("-s")[0]] for key in results}  # kd-s0, kd-s1 ... are students
    (version,) = client.search_model_versions("name = 'digits-kd-student'")  # the first seed's KD student only
    assert version.run_id == results["kd-s0"].run_id
    assert client.get_registered_model("digits-kd-student").description.startswith("Students distilled")
    assert "The KD student is registered as models:/digits-kd-student/1" in out
    # the run list's accuracy view: in the demo's experiment, its address printed; agreement where a teacher is
    experiment = client.get_experiment_by_name("kdhub-demo")
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{VIEW_KEY}"])
    assert view["name"] == "Accuracy"
    # the teacher ran first (no agreement); the KD runs' agreement metric added its declared column
    assert json.loads(view["state"])["selectedColumns"][3:] == [
        "metrics.`test/acc_last`",
        "metrics.`test/acc_at_best_val`",
        "metrics.`test/agreement/pa`",
    ]
    assert accuracy_view_url(experiment.experiment_id) in out
    for key, result in results.items():
        metrics = client.get_run(result.run_id).data.metrics
        assert "test/acc_last" in metrics
        assert ("test/agreement/pa" in metrics) == key.startswith("kd"), key

    snippet = "\n".join(line[2:] for line in out.split("Load it and classify raw digits with:\n", 1)[1].splitlines())
    scope: dict = {}
    exec(compile(snippet, "demo-hint", "exec"), scope)  # the printed code, as a user pastes it
    model, x = scope["model"], scope["x"]
    assert x.dtype == np.float32
    assert x.shape == (1797, 1, 8, 8)
    data = digits_data()
    test_images = data.normalise(data.splits["test"].images).numpy()
    with torch.no_grad():
        expected = results["kd-s0"].student.cpu().eval()(torch.from_numpy(test_images)).numpy()
    np.testing.assert_allclose(model.predict(test_images), expected, rtol=1e-5, atol=1e-5)
    # the hint's normalisation of raw 0..16 pixels is the training one: the same logits on the same images
    raw = torch.from_numpy(np.round(load_digits_images() * 255 / 16)).to(torch.uint8)[:, None]
    np.testing.assert_allclose(data.normalise(raw).numpy(), x, rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception, match=r"float64|double|dtype|type"):
        model.predict(x.astype(np.float64))  # pyfunc enforces the float32 signature

    # the loaded pt2 graph cannot train; the kdhub checkpoint inside the model rebuilds a trainable module
    mlflow.set_tracking_uri(uri)
    try:
        graph = mlflow.pytorch.load_model("models:/digits-kd-student/1")
    finally:
        mlflow.set_tracking_uri(None)
    with pytest.raises(NotImplementedError):
        graph.train()
    path = resolve_artifact("models:/digits-kd-student/1", uri, tmp_path / "dl")
    net = network_from_checkpoint(load_checkpoint(path))
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(torch.from_numpy(test_images)).numpy(), expected, rtol=1e-5, atol=1e-5)
    net.train()  # (after the comparison: a training-mode forward moves batch-norm statistics)
    loss = net(torch.from_numpy(x[:8])).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def load_digits_images() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images
