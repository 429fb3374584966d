"""A real two-process run with torchrun (gloo on the CPU): decisions and metrics agree across ranks."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml


@pytest.mark.slow
def test_two_process_run_with_tllm_and_a_trainable_method(tmp_path):
    teacher = {
        "epochs": 2,
        "data": {"name": "digits", "batch_size": 64},
        "student": {"name": "cnn", "options": {"width": 16}},
        "train": {"progress": False},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'm.db'}", "experiment": "ddp"},
    }
    from kdhub.engine.loop import run

    teacher_id = run(teacher).run_id
    config = {
        **teacher,
        "epochs": 3,
        "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
        "student": {"name": "cnn", "options": {"width": 8}},
        "teacher": {"name": "cnn", "options": {"width": 16}, "weights": f"runs:/{teacher_id}/checkpoints/final.pt"},
        "methods": [{"name": "kd", "weight": 0.9}, {"name": "fitnet", "weight": 1.0}],
        "policy": {"name": "tllm", "options": {"start": 1, "window": 1, "eta": 10.0}},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "kdhub.cli", "run", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("test accuracy last") == 1  # only rank 0 reports and logs
    client = mlflow.MlflowClient(config["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id], "tags.method = 'kd,fitnet'")
    assert len(runs) == 1
    assert runs[0].info.status == "FINISHED"
    # eta = 10 stops every class at the first decision (epoch 2), identically on both ranks
    assert runs[0].data.metrics["tllm/stopped_classes"] == 10
