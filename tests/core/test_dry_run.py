"""``kdhub run --dry-run``: the resolved plan of a config, policy values included, and nothing trained."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

import kdhub
from kdhub.commands.cli import main

CONFIG = {
    "epochs": 12,
    "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.2},
    "student": {"name": "cnn", "options": {"width": 4}},
    "teacher": {"name": "cnn", "options": {"width": 8}},
    "ce_weight": 0.1,
    "methods": [{"name": "kd", "weight": 0.9}],
    "policy": {"name": "tllm", "options": {"eta": 0.01}},
    "metrics": ["per_class_accuracy", {"name": "confusion", "split": "val"}],
    "train": {"progress": False},
}


def write(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_dry_run_prints_the_resolved_plan_and_trains_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default MLflow store would be ./mlflow.db
    uri = f"sqlite:///{tmp_path}/store.db"
    assert main(["run", write(tmp_path, CONFIG), "--dry-run", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# kdhub run --dry-run")
    plan = yaml.safe_load(out)
    assert plan["data"]["classes"] == 10
    assert plan["data"]["train"] + plan["data"]["val"] == 1347  # 75 % of 1,797 digits, 20 % of it held out
    assert plan["data"]["steps_per_epoch"] == -(-plan["data"]["train"] // 64)
    assert plan["student"]["parameters"] > 0
    assert plan["teacher"]["weights"].startswith("none")
    assert plan["methods"] == [{"name": "kd", "weight": 0.9, "options": {"temperature": 4.0, "reduction": "batchmean"}}]
    resolved = plan["policy"]["resolved"]
    # 12 epochs: S = round(2.4) = 2, K = max(3, round(1.2)) = 3, end round(9.6) = 10: decisions at epochs
    # 5 .. 10; cap floor(0.5 * 10)
    assert resolved["tllm/start_epoch"] == 2
    assert resolved["tllm/window_epochs"] == 3
    assert resolved["tllm/first_decision_epoch"] == 5
    assert resolved["tllm/end_epoch"] == 10
    assert resolved["tllm/decision_epochs"] == 6
    assert resolved["tllm/max_stopped"] == 5
    assert resolved["tllm/eta"] == 0.01
    assert plan["policy"]["options"]["criterion"] == "trend"
    assert plan["metrics"][1] == {
        "name": "confusion",
        "split": "val",
        "every": 0,
        "at": [],
        "options": {"annotate": True},
    }
    assert not (tmp_path / "store.db").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_dry_run_lists_the_warnings_a_run_would_give(tmp_path, capsys):
    config = {**CONFIG, "epochs": 4, "policy": {"name": "tllm", "options": {"start": 4, "window": 1}}}
    assert main(["run", write(tmp_path, config), "--dry-run"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert any("too short to tell" in w for w in plan["warnings"])
    assert any("no class will be stopped" in w for w in plan["warnings"])


def test_dry_run_leaves_out_libraries_deprecation_notices(tmp_path, capsys, monkeypatch):
    from kdhub.engine import loop

    original = loop.build_run

    def noisy(*args, **kwargs):
        warnings.warn("torchvision.io is deprecated", DeprecationWarning, stacklevel=1)
        warnings.warn("a note for the user", UserWarning, stacklevel=1)
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "build_run", noisy)
    assert main(["run", write(tmp_path, CONFIG), "--dry-run"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert "a note for the user" in plan["warnings"]
    assert not any("deprecated" in w for w in plan["warnings"])


def test_dry_run_rejects_what_training_would_reject(tmp_path, capsys):
    config = {**CONFIG, "data": {"name": "digits", "batch_size": 64}}  # tllm needs a validation split
    assert main(["run", write(tmp_path, config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "data.val_fraction" in err
    assert "\n" not in err.strip()


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("tllm", {}),
        ("tllm", {"criterion": "paper", "start": 3, "window": 2, "end": 0.5}),
        ("eskd", {"stop_at": 0.7}),
        ("loss_switch", {"at": 0.5}),
        ("annealing", {"phase1_epochs": 0.6}),
        ("constant", {}),
    ],
)
def test_policies_log_what_they_describe(name, options):
    """describe() (what the dry run prints) equals the params the policy logs once it runs."""
    import torch

    policy = kdhub.create("policy", name, **options)
    described = policy.describe(20, 10)
    ctx = kdhub.PolicyContext(
        epochs=20,
        steps_per_epoch=5,
        num_classes=10,
        ce_weight=0.1,
        device=torch.device("cpu"),
        has_validation=True,
        method_names=["kd"],
    )
    policy.setup(ctx)
    log = kdhub.MemoryLog()
    losses = torch.ones(10) if policy.wants_class_losses else None
    policy.epoch_ended(kdhub.EpochReport(epoch=1, log=log, val_accuracy=50.0, class_losses=losses))
    logged = {k: v for k, v in log.param_values.items() if k in described}
    assert logged == described
