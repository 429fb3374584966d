"""The Ray executor: the same study on 2 Ray workers gives the numbers of the local executor."""

import glob
import os

import mlflow
import pytest

from kdhub.study import StudyConfig, run_study
from kdhub.tracking import PID_TAG

ray = pytest.importorskip("ray")

BASE = {
    "epochs": 2,
    "data": {"name": "digits", "batch_size": 128, "val_fraction": 0.1},
    "student": {"name": "cnn", "options": {"width": 4}},
    "metrics": ["accuracy"],
    "train": {"progress": False},
    "tracking": {"log_model": False},
}
TEACHER = {"name": "cnn", "options": {"width": 8}, "weights": "runs:/${teacher}/checkpoints/final.pt"}
RUNS = [
    {"name": "teacher", "set": {"student": {"name": "cnn", "options": {"width": 8}}}},
    {"name": "vanilla"},
    {"name": "kd", "set": {"teacher": TEACHER, "methods": ["kd"]}},
    {"name": "broken", "set": {"teacher": {**TEACHER, "weights": "/nonexistent/teacher.pt"}, "methods": ["kd"]}},
]


def by_key(result):
    s = result["summary"]
    keys = [f"{r} s{seed}" for r, seed in zip(s["run"], s["seed"], strict=True)]
    return {
        k: (state, last, best)
        for k, state, last, best in zip(keys, s["state"], s["test_acc_last"], s["test_acc_best"], strict=True)
    }


def test_ray_with_two_workers_gives_the_numbers_of_the_local_executor(mlflow_uri, capsys):
    def study(experiment):
        data = {"name": "ray-vs-local", "experiment": experiment, "base": BASE, "runs": RUNS, "seeds": [0, 1]}
        return StudyConfig.model_validate(data)

    local = run_study(study("tests-study-local"), mlflow_uri)
    temp_before = set(glob.glob("/tmp/kdhub-ray-*"))
    capsys.readouterr()
    remote = run_study(study("tests-study-ray"), mlflow_uri, executor="ray", parallel=2)
    out = capsys.readouterr().out
    assert "on ray (local Ray instance: 2 CPUs, 0 GPUs; 2 runs at a time)" in out
    assert "running 2," in out  # two runs did run at the same time

    expected = by_key(local)
    assert len(expected) == 8
    assert sum(state == "finished" for state, _, _ in expected.values()) == 6
    assert by_key(remote) == expected  # same seeds, same numbers (NaN-free: the failed runs have none)
    assert list(remote["failures"]) == list(local["failures"])
    assert remote["failures"][0][0] == "broken s0"
    assert "/nonexistent/teacher.pt" in remote["failures"][0][1]

    client = mlflow.MlflowClient(mlflow_uri)
    parent = client.get_run(remote["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{remote['parent_run_id']}'")
    assert sorted(c.info.run_name for c in children) == sorted(
        k.replace(" s", "-s") for k, (state, _, _) in expected.items() if state == "finished"
    )
    # Ray's worker processes went on from run to run (imports and the store paid once per worker, not per run),
    # the failed runs included: the runs after them in the same process gave the local executor's numbers
    pids = {c.data.tags[PID_TAG] for c in children}
    assert str(os.getpid()) not in pids
    assert len(pids) < len(children), pids
    kd = next(c for c in children if c.data.tags["kdhub.study.key"] == "kd-s1")
    teacher = remote["run_ids"][1]["teacher"]
    assert kd.data.params["teacher.weights"] == f"runs:/{teacher}/checkpoints/final.pt"
    # Ray was started for the study and stopped after it, its temporary files removed
    assert not ray.is_initialized()
    assert set(glob.glob("/tmp/kdhub-ray-*")) == temp_before
