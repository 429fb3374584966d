"""Studies that really train (local executor): nesting, failures, interruption and resume."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
import yaml

import kdhub
from kdhub.commands.cli import main
from kdhub.study import StudyConfig, run_study, study_status
from kdhub.study.worker import KEY_TAG
from kdhub.testing import registered

BASE = {
    "epochs": 3,
    "data": {"name": "digits", "batch_size": 128, "val_fraction": 0.1},
    "student": {"name": "cnn", "options": {"width": 4}},
    "metrics": ["accuracy"],
    "train": {"progress": False},
    "tracking": {"log_model": False},
}
TEACHER = {"name": "cnn", "options": {"width": 8}, "weights": "runs:/${teacher}/checkpoints/final.pt"}


def make(name: str, runs: list[dict], seeds=(0,), experiment="tests-study") -> StudyConfig:
    return StudyConfig.model_validate(
        {"name": name, "experiment": experiment, "base": BASE, "runs": runs, "seeds": list(seeds)}
    )


def teacher_and_kd(**extra) -> list[dict]:
    return [
        {"name": "teacher", "set": {"student": {"name": "cnn", "options": {"width": 8}}}, **extra},
        {"name": "vanilla"},
        {"name": "kd", "set": {"teacher": TEACHER, "methods": ["kd"]}},
    ]


class Trap:
    """A lifecycle plugin that raises ``error`` after epoch ``epoch`` of the run with study key ``key``."""

    def __init__(self, key: str, epoch: int, error: BaseException) -> None:
        self.key, self.epoch, self.error = key, epoch, error

    @kdhub.hookimpl
    def kdhub_epoch_ended(self, run, epoch, metrics):
        if run.config.tracking.tags.get(KEY_TAG) == self.key and epoch == self.epoch:
            raise self.error


def trap(key: str, epoch: int, error: BaseException) -> contextlib.AbstractContextManager[None]:
    return registered(Trap(key, epoch, error), "trap")


def children(uri: str, parent_id: str) -> dict[str, mlflow.entities.Run]:
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {
        r.data.tags[KEY_TAG]: r for r in runs if KEY_TAG in r.data.tags and "kdhub.study.superseded" not in r.data.tags
    }


def test_study_runs_nest_under_a_parent_and_chain_teachers(mlflow_uri, capsys, tmp_path):
    result = run_study(make("nest", teacher_and_kd(shared=True), seeds=[0, 1]), mlflow_uri)
    runs = children(mlflow_uri, result["parent_run_id"])
    assert sorted(runs) == ["kd-s0", "kd-s1", "teacher-s0", "vanilla-s0", "vanilla-s1"]
    teacher_id = result["run_ids"][0]["teacher"]
    for key in ("kd-s0", "kd-s1"):  # the shared teacher teaches every seed
        assert runs[key].data.params["teacher.weights"] == f"runs:/{teacher_id}/checkpoints/final.pt"
        assert runs[key].data.params["seed"] == key[-1]
    assert result["summary"]["run"] == ["teacher", "vanilla", "kd", "vanilla", "kd"]
    assert result["summary"]["state"] == ["finished"] * 5
    # one line per state change, with the live counts, even though progress bars are off
    out = capsys.readouterr().out.splitlines()
    assert sum(" started " in line for line in out) == 5
    assert sum(" finished " in line for line in out) == 5
    assert out[-1].endswith("[running 0, done 5/5, failed 0]")
    # the seeds of each grid point are aggregated on the parent
    client = mlflow.MlflowClient(mlflow_uri)
    path = client.download_artifacts(result["parent_run_id"], "tables/study/aggregate.json", str(tmp_path))
    payload = json.loads(Path(path).read_text())
    rows = {row[0]: dict(zip(payload["columns"], row, strict=True)) for row in payload["data"]}
    kd = [runs[k].data.metrics["test/acc_last"] for k in ("kd-s0", "kd-s1")]
    assert rows["kd"]["last_n"] == 2
    assert rows["kd"]["last_mean"] == pytest.approx(sum(kd) / 2)
    assert rows["kd"]["last_std"] == pytest.approx(abs(kd[0] - kd[1]) / 2**0.5)
    assert rows["kd"]["at_best_val_n"] == 2
    assert rows["teacher"]["best_n"] == 1
    # and as metrics of the parent run (columns of the run list, charts)
    parent = client.get_run(result["parent_run_id"]).data.metrics
    assert parent["kd/test/acc_last_mean"] == pytest.approx(sum(kd) / 2)
    assert parent["kd/test/acc_last_std"] == pytest.approx(abs(kd[0] - kd[1]) / 2**0.5)
    assert "kd/test/acc_at_best_val_mean" in parent
    assert "teacher/test/acc_last_mean" in parent
    assert "teacher/test/acc_last_std" not in parent  # one seed: no standard deviation
    artifacts = {f.path for f in client.list_artifacts(result["parent_run_id"], "figures/study")}
    assert artifacts == {"figures/study/aggregate.png"}


def test_a_failing_run_does_not_stop_the_others_and_a_rerun_redoes_only_it(mlflow_uri, tmp_path, capsys):
    runs = [
        *teacher_and_kd(),
        {"name": "broken", "set": {"teacher": {**TEACHER, "weights": str(tmp_path / "missing.pt")}, "methods": []}},
        {
            "name": "after_broken",
            "set": {
                "teacher": {"name": "cnn", "options": {"width": 4}, "weights": "runs:/${broken}/checkpoints/final.pt"}
            },
        },
        {"name": "flaky", "set": {"optim": {"lr": 0.02}}},
    ]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(make("failing", runs).model_dump(mode="json")))
    with trap("flaky-s0", 2, RuntimeError("simulated crash")):
        code = main(["study", str(path), "--tracking-uri", mlflow_uri])
    assert code == 2  # the first failure is bad input: a teacher weights file that does not exist
    out = capsys.readouterr().out
    assert f"failed    broken s0: teacher.weights: {tmp_path / 'missing.pt'}: no such file" in out
    assert "skipped   after_broken s0: needs broken s0, which failed" in out
    assert "failed    flaky s0: plugin 'trap' from local: kdhub_epoch_ended raised RuntimeError: simulated crash" in out
    assert "3 of 6 runs finished" in out
    status = {r["run"]: r for r in study_status(make("failing", runs), mlflow_uri)["rows"]}
    assert [status[k]["state"] for k in ("teacher s0", "vanilla s0", "kd s0", "flaky s0")] == ["finished"] * 3 + [
        "failed"
    ]
    assert status["broken s0"]["state"] == "pending"  # it failed before its MLflow run existed
    first = {r["run"]: r["run_id"] for r in status.values()}

    # fix the broken run; the rerun runs only what did not finish
    runs[3]["set"]["teacher"]["weights"] = "runs:/${teacher}/checkpoints/final.pt"
    result = run_study(make("failing", runs), mlflow_uri)
    assert result["failures"] == []
    kept = [r["run"] for r in result["rows"] if r["earlier"]]
    assert kept == ["teacher", "vanilla", "kd"]
    ids = dict(zip(result["summary"]["run"], result["summary"]["run_id"], strict=True))
    assert [ids[n] for n in ("teacher", "vanilla", "kd")] == [first[f"{n} s0"] for n in ("teacher", "vanilla", "kd")]
    assert ids["flaky"] != first["flaky s0"]
    client = mlflow.MlflowClient(mlflow_uri)
    old = client.get_run(first["flaky s0"])
    assert old.info.status == "FAILED"
    assert old.data.tags["kdhub.study.superseded"] == "rerun: it failed"
    assert client.get_run(result["parent_run_id"]).info.status == "FINISHED"


def test_an_interrupted_study_resumes_the_interrupted_run_exactly(mlflow_uri, capsys):
    spec = make("interrupted", teacher_and_kd(), seeds=[0, 1])
    with trap("kd-s0", 2, KeyboardInterrupt()), pytest.raises(KeyboardInterrupt):
        run_study(spec, mlflow_uri)
    status = {r["run"]: r for r in study_status(spec, mlflow_uri)["rows"]}
    assert [status[k]["state"] for k in ("teacher s0", "vanilla s0", "kd s0", "teacher s1")] == [
        "finished",
        "finished",
        "interrupted",
        "pending",
    ]
    client = mlflow.MlflowClient(mlflow_uri)
    interrupted = status["kd s0"]["run_id"]
    assert client.get_run(interrupted).info.status == "KILLED"
    capsys.readouterr()

    result = run_study(spec, mlflow_uri)
    out = capsys.readouterr().out
    assert f"resumed   kd s0: from run {interrupted}" in out
    assert "3 to run" in out
    ids = dict(
        zip(
            [f"{r} s{s}" for r, s in zip(result["summary"]["run"], result["summary"]["seed"], strict=True)],
            result["summary"]["run_id"],
            strict=True,
        )
    )
    assert ids["kd s0"] == interrupted
    assert ids["teacher s0"] == status["teacher s0"]["run_id"]
    resumed = client.get_run(interrupted)
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["kdhub.resumed"] == "true"
    # the resumed run has the numbers of the same run trained without interruption
    from kdhub.engine.runner import run
    from kdhub.tracking import load_run_config

    config = load_run_config(interrupted, mlflow_uri)
    config["tracking"] = {"uri": mlflow_uri}
    reference = run(config, track=False)
    assert resumed.data.metrics["test/acc_last"] == pytest.approx(reference.last_acc, abs=1e-9)
    assert resumed.data.metrics["test/acc_at_best_val"] == pytest.approx(
        reference.metrics["test/acc_at_best_val"], abs=1e-9
    )


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import kdhub
    from kdhub.registry import loading as plugins
    from kdhub.commands.cli import main

    class Killer:
        @kdhub.hookimpl
        def kdhub_epoch_ended(self, run, epoch, metrics):
            if run.config.tracking.tags.get("kdhub.study.key") == sys.argv[2] and epoch == 2:
                os.kill(os.getpid(), getattr(signal, sys.argv[3]))

    plugins.register_module(Killer(), name="killer")
    sys.exit(main(["study", sys.argv[1], "--tracking-uri", sys.argv[4]]))
    """
)


@pytest.mark.parametrize("sig", ["SIGKILL", pytest.param("SIGTERM", marks=pytest.mark.slow)])
def test_a_killed_study_process_reruns_only_what_is_left(sig, mlflow_uri, tmp_path, capsys):
    uri = mlflow_uri  # an existing store: the subprocess does not pay for creating one
    spec = make(f"killed-{sig}", teacher_and_kd(shared=True), seeds=[0, 1])
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(path), "vanilla-s1", sig, uri],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    if sig == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:  # SIGTERM stops the study like Ctrl-C, with the shell's code for SIGTERM
        assert proc.returncode == 143, proc.stderr
        assert "run the study again" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert "finished  kd s0" in proc.stdout
    before = {r["run"]: r for r in study_status(spec, uri)["rows"]}
    assert [before[k]["state"] for k in ("teacher s0", "vanilla s0", "kd s0", "kd s1")] == [
        "finished",
        "finished",
        "finished",
        "pending",
    ]
    assert before["vanilla s1"]["state"] == "interrupted"
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(study_status(spec, uri)["parent"]["run_id"])
    assert parent.info.status == ("RUNNING" if sig == "SIGKILL" else "KILLED")
    capsys.readouterr()

    result = run_study(spec, uri)
    out = capsys.readouterr().out
    assert "(3 finished earlier, 1 to resume, 1 to run)" in out
    started = [line.split()[2] + " " + line.split()[3] for line in out.splitlines() if " started " in line]
    assert started == ["kd s1"]
    assert f"resumed   vanilla s1: from run {before['vanilla s1']['run_id']}" in out
    assert result["parent_run_id"] == parent.info.run_id
    assert result["summary"]["state"] == ["finished"] * 5
    assert client.get_run(parent.info.run_id).data.tags["kdhub.study.invocation"] == "2"
