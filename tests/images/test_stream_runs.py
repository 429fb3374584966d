"""Real runs on image folders: training, per-class analysis, TLLM, the ImageNet and CUB layouts, exact resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import torch
import yaml

from kdhub.engine.runner import run
from kdhub.testing import interrupt_after
from kdhub.tracking import Tracker, load_table


def folder_config(root, mlflow_uri: str, **data) -> dict:
    options = {"root": str(root), "augment": "resize", "image_size": 16, "channels": 1, "horizontal_flip": False}
    return {
        "seed": 0,
        "epochs": 3,
        "data": {
            "name": "image_folder",
            "options": options,
            "batch_size": 64,
            "val_fraction": 0.1,
            "workers": 0,
            **data,
        },
        "student": {"name": "cnn", "options": {"width": 8}},
        "optim": {"lr": 0.1},
        "schedule": {"name": "constant"},
        "train": {"progress": False},
        "tracking": {"uri": mlflow_uri, "experiment": "stream"},
    }


def test_an_image_folder_trains_with_per_class_analysis(digit_folder, mlflow_uri):
    result = run(folder_config(digit_folder, mlflow_uri))
    assert result.last_acc > 40  # 10 classes: chance is 10 %
    assert result.history[-1]["loss/ce"] < result.history[0]["loss/ce"]
    table = load_table(result.run_id, "test/per_class_accuracy", mlflow_uri)
    assert sum(table["count"]) == 397  # every image of val/ is the test split
    overall = sum(a * n for a, n in zip(table["student"], table["count"], strict=True)) / 397
    assert overall == pytest.approx(result.last_acc)
    data = mlflow.MlflowClient(mlflow_uri).get_run(result.run_id).data
    assert data.params["data.name"] == "image_folder"
    assert "val/acc" in data.metrics
    assert "data/skipped_images" not in data.metrics  # nothing is skipped unless asked


def test_tllm_reads_per_class_validation_losses_on_streamed_data(digit_folder, mlflow_uri):
    config = folder_config(digit_folder, mlflow_uri, train_fraction=0.3)
    config.update(
        teacher={"name": "cnn", "options": {"width": 8}},
        methods=[{"name": "kd", "weight": 0.9, "options": {"temperature": 4}}],
        policy={
            "name": "tllm",
            "options": {
                "start": 1,
                "window": 1,
                "eta": 10.0,
                "criterion": "paper",
                "patience": 1,
                "end": None,
                "max_stopped_fraction": 1.0,
            },
        },
        metrics=["accuracy"],
    )
    result = run(config)
    client = mlflow.MlflowClient(mlflow_uri)
    assert client.get_run(result.run_id).data.metrics["tllm/stopped_classes"] == 10  # eta = 10 stops all at epoch 2
    curves = load_table(result.run_id, "tllm_curves", mlflow_uri)
    assert curves["epoch"] == [1, 2, 3]
    assert all(v > 0 for c in range(10) for v in curves[str(c)])  # a real per-class KD loss on val


@pytest.mark.parametrize("layout", ["imagenet", "cub200"])
def test_the_imagenet_and_cub_layouts_train(layout, fake_imagenet, fake_cub, mlflow_uri):
    root = fake_imagenet if layout == "imagenet" else fake_cub
    config = folder_config(root, mlflow_uri, name=layout)
    config["data"]["options"] = {"root": str(root), "image_size": 16, "resize_size": 20, "min_scale": 0.5}
    config["metrics"] = ["per_class_accuracy"]
    result = run(config)
    assert result.last_acc > 30
    table = load_table(result.run_id, "test/per_class_accuracy", mlflow_uri)
    assert table["name"][0] == ("zero" if layout == "imagenet" else "Digit_zero")


def test_kill_and_resume_with_workers_gives_the_same_weights(digit_folder, mlflow_uri):
    config = folder_config(digit_folder, mlflow_uri, workers=2, train_fraction=0.25)
    config["data"]["options"].update(augment="imagenet", resize_size=18, horizontal_flip=True)
    config["metrics"] = []
    reference = run(config)
    with interrupt_after(2, KeyboardInterrupt("simulated interruption")), pytest.raises(KeyboardInterrupt):
        run(config)
    client = mlflow.MlflowClient(mlflow_uri)
    killed = client.search_runs(
        [client.get_experiment_by_name("stream").experiment_id], "attributes.status = 'KILLED'", max_results=1
    )[0]
    resumed = run(config, resume_run_id=killed.info.run_id)
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    for (name, a), b in zip(reference.student.state_dict().items(), resumed.student.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.last_acc == reference.last_acc


def test_sigterm_to_the_process_group_ends_a_streamed_run_killed(digit_folder, tmp_path):
    """Schedulers (Slurm, torchrun) send SIGTERM to every process of the job, DataLoader workers too."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = folder_config(digit_folder, uri, workers=2)
    config["epochs"] = 200
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    Tracker(uri, "stream")  # the store exists before the test polls it
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdhub.cli", "run", str(path)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a job step has
    )
    client = mlflow.MlflowClient(uri)
    deadline = time.time() + 120
    run_id = None
    while run_id is None and time.time() < deadline:
        experiment = client.get_experiment_by_name("stream")
        runs = client.search_runs([experiment.experiment_id]) if experiment is not None else []
        if runs and client.get_metric_history(runs[0].info.run_id, "loss/total"):
            run_id = runs[0].info.run_id
        time.sleep(0.3)
    assert run_id is not None, "the run did not finish an epoch"
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    run_info = client.get_run(run_id)
    assert run_info.info.status == "KILLED"
    assert "terminated by SIGTERM" in run_info.data.tags["kdhub.failure"]


def test_unreadable_images_stop_the_run_or_are_skipped_and_counted(digit_folder, tmp_path, mlflow_uri, capsys):
    import shutil

    from kdhub.commands.cli import main

    root = tmp_path / "broken"
    shutil.copytree(digit_folder, root)
    victim = sorted((root / "train" / "3").iterdir())[0]
    victim.write_bytes(b"not an image at all")
    config = folder_config(root, mlflow_uri, on_error="skip")
    config["epochs"] = 2
    config["metrics"] = []
    result = run(config)
    metrics = mlflow.MlflowClient(mlflow_uri).get_metric_history(result.run_id, "data/skipped_images")
    # the file is in the training split (val_fraction draws by index): skipped once per epoch
    assert [m.value for m in metrics] == [1.0, 1.0]

    import yaml

    config["data"]["on_error"] = "raise"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"kdhub: error: {victim}: cannot read image")
