"""Real short runs of every policy on digits (8x8) through the engine."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import kdhub
from kdhub.contract.config_loading import apply_overrides, parse_config
from kdhub.engine.loop import Trainer
from kdhub.engine.runner import run
from kdhub.testing import interrupt_after

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

BASE: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
    "student": {"name": "cnn", "options": {"width": 4, "depth": 2}},
    "teacher": {"name": "cnn", "options": {"width": 8, "depth": 2}},
    "optim": {"name": "sgd", "lr": 0.05},
    "schedule": {"name": "constant"},
    "metrics": ["accuracy"],
    "train": {"device": "cpu", "progress": False},
}


def replay_decisions(table: dict[str, list], options: dict[str, Any], epochs: int) -> dict[int, int]:
    """TLLM's decisions replayed on a fresh policy from a run's logged ``tllm_curves`` table."""
    replay = kdhub.create("policy", "tllm", **options)
    context = kdhub.PolicyContext(
        epochs=epochs,
        steps_per_epoch=1,
        num_classes=10,
        ce_weight=0.1,
        device=torch.device("cpu"),
        has_validation=True,
        method_names=["kd"],
    )
    replay.setup(context)
    for row, epoch in enumerate(table["epoch"]):
        replay.curves[epoch] = [table[str(m)][row] for m in range(10)]
        replay.decide(epoch)
    return replay.stopped


def train(**config: Any) -> Trainer:
    """Train without MLflow; ``trainer.log`` is a MemoryLog and ``trainer.policy`` the policy."""
    trainer = Trainer(parse_config({**BASE, **config}))
    trainer.fit()
    assert isinstance(trainer.log, kdhub.MemoryLog)
    return trainer


def series(log: kdhub.MemoryLog, key: str) -> list[float]:
    return [v for _, v in log.metric_history[key]]


@pytest.mark.filterwarnings("ignore:tllm. the window is 1 epoch")
def test_tllm_stops_classes_in_a_real_run():
    # the paper's criterion with a 1-epoch window: it stops classes within 5 epochs
    options = {
        "criterion": "paper",
        "start": 2,
        "window": 1,
        "eta": 0.0,
        "max_stopped_fraction": 0.5,
        "patience": 1,
        "end": None,
    }
    trainer = train(
        epochs=5,
        ce_weight=0.1,
        methods=[{"name": "kd", "weight": 0.9, "options": {"temperature": 4}}],
        policy={"name": "tllm", "options": options},
    )
    policy, log = trainer.policy, trainer.log
    assert 0 < len(policy.stopped) <= 5, policy.stopped
    stopped = series(log, "tllm/stopped_classes")
    assert len(stopped) == 5
    assert stopped[-1] == len(policy.stopped)
    assert stopped[:2] == [0, 0]
    first_stop = min(policy.stopped.values())
    # the replacement loss appears from the epoch after the first stop on
    replaced = dict(log.metric_history["loss/kd.replaced"])
    assert min(replaced) == first_stop + 1
    # the decisions follow from the logged curves: replay them on a fresh policy
    table = log.tables["tllm_curves"]
    assert all(math.isfinite(table[str(m)][row]) for m in range(10) for row in range(len(table["epoch"])))
    assert replay_decisions(table, options, epochs=5) == policy.stopped
    assert log.tables["tllm_stopped"]["stopped_epoch"] == [policy.stopped[m] for m in sorted(policy.stopped)]
    assert "tllm_curves" in log.figures
    assert log.param_values["tllm/curve_loss"] == "methods"


def test_tllm_defaults_in_a_real_run():
    """The defaults on a 12-epoch digits run: resolved values logged, decisions replayable, the cap held."""
    trainer = train(
        epochs=12,
        ce_weight=0.1,
        methods=[{"name": "kd", "weight": 0.9, "options": {"temperature": 4}}],
        policy={"name": "tllm"},
    )
    policy, log = trainer.policy, trainer.log
    params = log.param_values
    assert (params["tllm/criterion"], params["tllm/start_epoch"], params["tllm/window_epochs"]) == ("trend", 2, 3)
    assert (params["tllm/end_epoch"], params["tllm/max_stopped"]) == (10, 5)
    assert len(policy.stopped) <= 5
    assert all(5 <= e <= 10 for e in policy.stopped.values())
    assert replay_decisions(log.tables["tllm_curves"], {}, epochs=12) == policy.stopped


def test_tllm_with_only_batch_relational_methods():
    trainer = train(epochs=2, ce_weight=1.0, methods=[{"name": "rkd"}], policy={"name": "tllm"})
    assert trainer.log.param_values["tllm/curve_loss"] == "kd(T=4)"
    assert all(math.isfinite(v) for v in trainer.policy.curves[2])


def test_eskd_real_run():
    trainer = train(
        epochs=3,
        ce_weight=0.1,
        methods=[{"name": "kd", "weight": 0.9}],
        policy={"name": "eskd", "options": {"stop_at": 3}},
    )
    log = trainer.log
    assert series(log, "eskd/kd_active") == [1, 1, 0]
    assert series(log, "policy/distill_factor") == [1, 1, 0]
    assert series(log, "policy/ce_weight") == [0.1, 0.1, 1]
    assert [e for e, _ in log.metric_history["loss/kd"]] == [1, 2]  # no KD term once stopped


def test_annealing_real_run():
    trainer = train(
        epochs=4,
        ce_weight=1.0,
        methods=[{"name": "mse_logits", "weight": 1.0}],
        policy={"name": "annealing", "options": {"phase1_epochs": 3, "tau_max": 3}},
    )
    log = trainer.log
    assert series(log, "annealing/phi") == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert series(log, "annealing/phase") == [1, 1, 1, 2]
    assert series(log, "policy/ce_weight") == [0, 0, 0, 1]
    assert series(log, "policy/distill_factor") == [1, 1, 1, 0]
    restored = log.metric_history["policy/restored_best_epoch"]
    assert len(restored) == 1
    assert restored[0][0] == 3
    assert 1 <= restored[0][1] <= 3
    assert [e for e, _ in log.metric_history["loss/ce"]] == [4]


def test_loss_switch_real_run():
    trainer = train(
        epochs=3,
        ce_weight=0.0,
        methods=[{"name": "kd", "weight": 1.0}],
        policy={"name": "loss_switch", "options": {"at": 2, "window": 1.0}},
    )
    log, n = trainer.log, trainer.steps_per_epoch
    # value at each epoch's last step: epoch 2 ends at step 2n - 1, lambda = (n - 1) / n
    assert series(log, "loss_switch/lambda") == pytest.approx([0, (n - 1) / n, 1])
    assert series(log, "policy/distill_factor") == pytest.approx(series(log, "loss_switch/kd_weight"))
    assert series(log, "policy/ce_weight") == pytest.approx(series(log, "loss_switch/ce_weight"))


def _example(name: str, overrides: list[str]) -> dict[str, Any]:
    return apply_overrides(yaml.safe_load((EXAMPLES / "eskd" / name).read_text()), overrides)


@pytest.mark.slow
def test_eskd_example_pair_uses_the_early_stopped_teacher(tmp_path):
    """examples/eskd on digits: the teacher keeps every epoch, the student takes epoch 3 through MLflow."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    small = ["data.name=digits", "data.batch_size=64", "metrics=[accuracy]", f"tracking.uri={uri}"]
    small += ["train.device=cpu", "train.progress=false"]
    teacher = _example(
        "teacher.yaml",
        [*small, "epochs=5", "student.name=cnn", "student.options={width: 8}", "schedule.milestones=[2]"],
    )
    assert teacher["checkpoint"] == {"every": 1}
    t = run(teacher)
    client = mlflow.MlflowClient(uri)
    kept = {a.path for a in client.list_artifacts(t.run_id, "checkpoints")}
    assert {f"checkpoints/epoch_{e:03d}.pt" for e in range(1, 6)} <= kept
    student = _example(
        "student.yaml",
        [
            *small,
            "epochs=4",
            "student={name: cnn, options: {width: 4}}",
            "teacher.name=cnn",
            "teacher.options={width: 8}",
            f"teacher.weights=runs:/{t.run_id}/checkpoints/epoch_003.pt",
            "schedule.milestones=[2]",
        ],
    )
    s = run(student)
    teacher_acc = {m.step: m.value for m in client.get_metric_history(t.run_id, "test/acc")}
    assert s.metrics["test/accuracy/teacher_acc"] == pytest.approx(teacher_acc[3])
    assert teacher_acc[3] != teacher_acc[5]  # epoch 3 is really a different teacher from the last one
    active = [m.value for m in sorted(client.get_metric_history(s.run_id, "eskd/kd_active"), key=lambda m: m.step)]
    assert active == [1, 1, 0, 0]  # stop_at 0.75 of 4 epochs = epoch 3


@pytest.mark.slow
def test_tllm_resume_gives_the_same_decisions(tmp_path, monkeypatch):
    """Interrupt a TLLM run after epoch 4, resume it from MLflow: same curves and stops as a straight run."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {
        **BASE,
        "epochs": 7,
        "ce_weight": 0.1,
        "methods": [{"name": "kd", "weight": 0.9}],
        "policy": {
            "name": "tllm",
            "options": {"start": 2, "window": 1, "eta": 0.05, "criterion": "paper", "patience": 1},
        },
        "tracking": {"uri": uri, "experiment": "resume", "log_model": False},
    }
    straight = run(config)
    with interrupt_after(4), pytest.raises(KeyboardInterrupt):
        run(config)
    client = mlflow.MlflowClient(uri)
    broken = next(
        r
        for r in client.search_runs(client.get_experiment_by_name("resume").experiment_id)
        if r.info.status == "KILLED"
    )
    resumed = run(config, resume_run_id=broken.info.run_id)
    from kdhub.tracking import load_table

    for name in ("tllm_stopped", "tllm_curves"):
        a, b = load_table(straight.run_id, name, uri), load_table(resumed.run_id, name, uri)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == b[key], (name, key)  # resume is exact on CPU
    assert load_table(straight.run_id, "tllm_stopped", uri)["class"], "no class was stopped"


def test_tllm_without_methods_or_validation_is_refused_before_building():
    config = {**BASE, "epochs": 1, "policy": {"name": "tllm"}, "methods": ["kd"]}
    no_methods = {k: v for k, v in config.items() if k not in ("teacher", "methods")}
    with pytest.raises(kdhub.ConfigError, match=r"^methods: policy 'tllm' .* add a method"):
        Trainer(parse_config(no_methods))
    with pytest.raises(kdhub.ConfigError, match=r"^data.val_fraction: policy 'tllm' needs a validation split"):
        Trainer(parse_config({**config, "data": {"name": "digits", "val_fraction": 0.0}}))
