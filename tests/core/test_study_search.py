"""Searches: 12 Optuna trials on digits with median pruning, nested MLflow runs, a search that continues."""

import contextlib
import json
import math
from pathlib import Path

import mlflow
import pytest
import yaml

import kdhub
from kdhub.contract.config_loading import parse_config
from kdhub.study import StudyConfig, run_study
from kdhub.testing import registered

pytest.importorskip("optuna")

BASE = {
    "epochs": 3,
    "data": {"name": "digits", "batch_size": 128, "val_fraction": 0.2},
    "student": {"name": "cnn", "options": {"width": 4}},
    "schedule": {"name": "cosine"},
    "metrics": ["accuracy"],
    "train": {"progress": False},
    "tracking": {"log_model": False},
}
SPACE = {
    "optim.lr": {"type": "float", "low": 0.0005, "high": 0.5, "log": True},
    "methods.0.options.temperature": {"type": "float", "low": 1, "high": 8},
}


class Interrupt:
    """Ctrl-C in the run with study key ``key``: as it starts (no checkpoint yet) or after epoch 1."""

    def __init__(self, key: str, at_start: bool) -> None:
        self.key, self.at_start = key, at_start

    def _mine(self, run) -> bool:
        return run.config.tracking.tags.get("kdhub.study.key") == self.key

    @kdhub.hookimpl
    def kdhub_run_started(self, run):
        if self.at_start and self._mine(run):
            raise KeyboardInterrupt

    @kdhub.hookimpl
    def kdhub_epoch_ended(self, run, epoch, metrics):
        if not self.at_start and self._mine(run) and epoch == 1:
            raise KeyboardInterrupt


def interrupt(key: str, at_start: bool) -> contextlib.AbstractContextManager[None]:
    return registered(Interrupt(key, at_start), "interrupt")


def study(trials: int) -> StudyConfig:
    teacher = {"name": "cnn", "options": {"width": 8}, "weights": "runs:/${teacher}/checkpoints/final.pt"}
    return StudyConfig.model_validate(
        {
            "name": "search",
            "experiment": "tests-study-search",
            "base": BASE,
            "runs": [
                {"name": "teacher", "set": {"student": {"name": "cnn", "options": {"width": 8}}}},
                {"name": "kd", "set": {"teacher": teacher, "methods": ["kd"]}},
            ],
            "search": {"run": "kd", "space": SPACE, "trials": trials, "startup_trials": 3, "warmup_epochs": 0},
        }
    )


def test_a_12_trial_search_with_pruning_logs_its_best_trial(mlflow_uri, tmp_path, capsys):
    result = run_study(study(12), mlflow_uri)
    search = result["search"]
    trials = search["trials"]
    assert trials["trial"] == list(range(12))
    assert set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    pruned = [i for i, s in enumerate(trials["state"]) if s == "PRUNED"]
    complete = [i for i, s in enumerate(trials["state"]) if s == "COMPLETE"]
    assert pruned, "the median pruner stopped no trial"
    assert all(trials["epochs"][i] < 3 for i in pruned)
    best = max(complete, key=lambda i: trials["value"][i])
    assert search["best_trial"] == best
    assert search["best_value"] == trials["value"][best]

    client = mlflow.MlflowClient(mlflow_uri)
    parent = client.get_run(result["parent_run_id"])
    runs = {
        int(r.data.tags["kdhub.study.trial"]): r
        for r in client.search_runs(
            [parent.info.experiment_id],
            f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`kdhub.study.role` = 'trial'",
        )
    }
    assert sorted(runs) == list(range(12))
    for i in pruned:  # a clean, identifiable end: no failure, no traceback
        tags = runs[i].data.tags
        assert runs[i].info.status == "KILLED"
        assert tags["kdhub.state"] == "PRUNED"
        assert tags["kdhub.pruned"].startswith(f"pruned by the median pruner after epoch {trials['epochs'][i]}")
        assert "kdhub.failure" not in tags
    for i in complete:
        assert runs[i].info.status == "FINISHED"
        # the objective is the validation accuracy of the last epoch, never a test metric
        history = client.get_metric_history(runs[i].info.run_id, "val/acc")
        assert trials["value"][i] == pytest.approx(max(history, key=lambda m: m.step).value)
    for i, run in runs.items():  # sampled values are params of each trial
        assert float(run.data.params["trial.optim.lr"]) == pytest.approx(trials["optim.lr"][i])
        assert float(run.data.params["optim.lr"]) == pytest.approx(trials["optim.lr"][i])

    # the best trial on the parent: values, run, config, table and Optuna's plots
    assert parent.data.tags["kdhub.search.best_run"] == runs[best].info.run_id
    assert runs[best].data.tags["kdhub.search.best"] == "true"
    assert float(parent.data.tags["search.best.optim.lr"]) == pytest.approx(trials["optim.lr"][best])
    assert parent.data.metrics["search/best/optim.lr"] == pytest.approx(trials["optim.lr"][best])
    assert parent.data.metrics["search/best_value"] == pytest.approx(trials["value"][best])
    assert parent.data.metrics["search/trials_pruned"] == len(pruned)
    config = yaml.safe_load(
        Path(client.download_artifacts(parent.info.run_id, "search/best_config.yaml", str(tmp_path))).read_text()
    )
    best_config = parse_config(config)
    assert best_config.optim.lr == pytest.approx(trials["optim.lr"][best])
    assert best_config.teacher.weights == f"runs:/{result['run_ids'][0]['teacher']}/checkpoints/final.pt"
    figures = {f.path for f in client.list_artifacts(parent.info.run_id, "figures/search")}
    assert figures == {f"figures/search/{n}.png" for n in ("history", "importance", "intermediate_values")}
    table = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "tables/search/trials.json", str(tmp_path))).read_text()
    )
    assert len(table["data"]) == 12
    out = capsys.readouterr().out
    assert f"best trial {best}: val/acc " in out
    assert out.count(" pruned    trial ") == len(pruned)

    # a larger budget continues the search: interrupted trials resume, no sampler draw repeats
    first = {tuple(trials[p][i] for p in SPACE) for i in range(12)}
    with interrupt("kd[trial-12]-s0", at_start=True), pytest.raises(KeyboardInterrupt):
        run_study(study(14), mlflow_uri)  # trial 12 stopped before its first checkpoint
    with interrupt("kd[trial-13]-s0", at_start=False), pytest.raises(KeyboardInterrupt):
        run_study(study(14), mlflow_uri)  # 12 starts again in its run; 13 is stopped after epoch 1
    out = capsys.readouterr().out
    assert "resumed   trial 12 " in out
    capsys.readouterr()
    more = run_study(study(14), mlflow_uri)
    out = capsys.readouterr().out
    assert more["parent_run_id"] == result["parent_run_id"]
    table = more["search"]["trials"]
    assert table["trial"] == list(range(14))
    assert set(table["state"]) <= {"COMPLETE", "PRUNED"}
    assert "resumed   trial 13 " in out
    assert [line for line in out.splitlines() if " started " in line] == []  # nothing new: the budget is spent
    assert "kept      teacher s0" in out
    for i in (12, 13):  # a continued sampler does not repeat the first invocation's draws
        assert tuple(table[p][i] for p in SPACE) not in first
    assert not math.isnan(more["search"]["best_value"])
    runs = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`kdhub.study.role` = 'trial'",
    )
    assert sorted(int(r.data.tags["kdhub.study.trial"]) for r in runs) == list(range(14))  # one run per trial
    resumed = [r for r in runs if r.data.tags["kdhub.study.trial"] in ("12", "13")]
    assert all(r.data.tags.get("kdhub.resumed") == "true" for r in resumed)
