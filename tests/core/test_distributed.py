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
    from kdhub.engine.runner import run

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


INTERRUPTED_RUN = """
import sys
import yaml
from kdhub.engine.runner import run
from kdhub.testing import interrupt_after

config = yaml.safe_load(open(sys.argv[1]))
with interrupt_after(int(sys.argv[2])):
    run(config)
"""


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.mark.slow
def test_resume_under_torchrun_restores_every_process(tmp_path):
    """CRD keeps a memory bank per process: resuming a 2-process run gives the uninterrupted run's weights."""
    import torch

    from kdhub.engine import checkpoint
    from kdhub.engine.runner import run

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    teacher = {
        "epochs": 1,
        "data": {"name": "digits", "batch_size": 64},
        "student": {"name": "cnn", "options": {"width": 8}},
        "train": {"progress": False},
        "tracking": {"uri": uri, "experiment": "ddp"},
    }
    teacher_id = run(teacher).run_id
    config = {
        **teacher,
        "epochs": 3,
        "student": {"name": "cnn", "options": {"width": 4}},
        "teacher": {"name": "cnn", "options": {"width": 8}, "weights": f"runs:/{teacher_id}/checkpoints/final.pt"},
        "methods": [{"name": "crd", "options": {"num_negatives": 256}}],
        "metrics": ["accuracy"],
    }
    path = tmp_path / "crd.yaml"
    path.write_text(yaml.safe_dump(config))
    straight = _torchrun(["-m", "kdhub.cli", "run", str(path)], tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED_RUN)
    broken = _torchrun([str(script), str(path), "2"], tmp_path)
    assert broken.returncode != 0
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id], "tags.method = 'crd'")
    killed = next(r for r in runs if r.info.status == "KILLED")
    done = next(r for r in runs if r.info.status == "FINISHED")
    resumed = _torchrun(["-m", "kdhub.cli", "run", "--resume", killed.info.run_id, "--tracking-uri", uri], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = checkpoint.load(Path(client.download_artifacts(done.info.run_id, "checkpoints/final.pt", str(tmp_path / "a"))))
    b = checkpoint.load(
        Path(client.download_artifacts(killed.info.run_id, "checkpoints/final.pt", str(tmp_path / "b")))
    )
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    last = checkpoint.load(
        Path(client.download_artifacts(killed.info.run_id, "checkpoints/last.pt", str(tmp_path / "c")))
    )
    banks = [p["methods"][0]["memory.memory_s"] for p in last["processes"]]
    assert len(banks) == 2
    assert not torch.equal(banks[0], banks[1])  # each process's own memory bank was kept
