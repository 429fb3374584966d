"""The ImageNet and CUB-200 recipes: they resolve, and they are the papers' recipes, value by value."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdhub.contract.config_loading import load_config
from kdhub.registry.loading import get_registry
from kdhub.registry.resolve import resolve_plugins

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IMAGENET = sorted((EXAMPLES / "imagenet").glob("*.yaml"))
CUB = sorted((EXAMPLES / "cub200").glob("*.yaml"))
DOC = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text()


@pytest.mark.parametrize("path", IMAGENET + CUB, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_resolves_and_is_documented(path):
    resolve_plugins(load_config(path), get_registry())
    assert f"examples/{path.parent.name}/{path.name}" in DOC


@pytest.mark.parametrize("path", [p for p in IMAGENET if "deit" not in p.name], ids=lambda p: p.name)
def test_imagenet_cnn_recipes_are_mdistillers(path):
    c = load_config(path)
    assert c.data.name == "imagenet"
    assert (c.epochs, c.data.batch_size, c.data.val_fraction) == (100, 512, 0.02)
    assert (c.optim.name, c.optim.lr, c.optim.momentum, c.optim.weight_decay) == ("sgd", 0.2, 0.9, 1e-4)
    assert (c.schedule.name, c.schedule.milestones, c.schedule.gamma) == ("multistep", [30, 60, 90], 0.1)
    pair = "resnet34" if "resnet34" in path.name or path.name == "vanilla_resnet18.yaml" else "resnet50"
    student = "torchvision:resnet18" if pair == "resnet34" else "mobilenetv1"
    assert c.student.name == student
    if "vanilla" in path.name:  # the teacher only evaluates (agreement): no method
        assert not c.methods
        assert c.teacher.name == f"torchvision:{pair}"
        return
    assert c.teacher.name == f"torchvision:{pair}"
    assert c.teacher.options == {"weights": "IMAGENET1K_V1"}
    method = c.methods[0]
    if method.name == "kd":  # mdistiller: T = 1, CE 0.5, KD 0.5
        assert (c.ce_weight, method.weight, method.options) == (0.5, 0.5, {"temperature": 1.0})
    else:  # mdistiller's DKD: CE 1, alpha 1, T 1, warm-up 1 epoch, beta 0.5 (r34 -> r18) or 2 (r50 -> mv1)
        beta = 0.5 if pair == "resnet34" else 2.0
        assert (c.ce_weight, method.name, method.weight) == (1.0, "dkd", 1.0)
        assert method.options == {"alpha": 1.0, "beta": beta, "temperature": 1.0, "warmup": 1}
    policy = {"kd": "constant", "dkd": "constant", "tllm": "tllm", "eskd": "eskd"}[path.name.split("_")[0]]
    assert c.policy.name == policy


@pytest.mark.parametrize("path", [p for p in IMAGENET if "deit" in p.name], ids=lambda p: p.name)
def test_deit_recipe_follows_facebookresearch_deit(path):
    c = load_config(path)
    assert (c.epochs, c.data.batch_size) == (300, 1024)
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay) == ("adamw", 1e-3, 0.05)  # 5e-4 x 1024 / 512
    assert (c.schedule.name, c.schedule.warmup_epochs, c.schedule.min_lr) == ("cosine", 5, 1e-5)
    assert c.student.options["distilled_training"] is True
    assert c.student.options["kwargs"] == {"drop_path_rate": 0.1}
    assert c.teacher.name == "timm:regnety_160.deit_in1k"
    assert c.ce_weight == 0.0
    assert [(m.name, m.weight) for m in c.methods] == [("label_smoothing", 0.5), ("deit", 0.5)]
    assert c.methods[0].options == {"alpha": 0.1}
    assert c.data.options["interpolation"] == "bicubic"
    assert c.data.options["rand_augment"] == 9


@pytest.mark.parametrize("path", CUB, ids=lambda p: p.name)
def test_cub_recipes_follow_the_tllm_appendix(path):
    c = load_config(path)
    assert c.data.name == "cub200"
    assert (c.epochs, c.data.batch_size, c.data.val_fraction) == (120, 64, 0.05)
    assert (c.optim.lr, c.schedule.milestones, c.schedule.gamma) == (0.05, [30, 60, 90], 0.1)
    assert c.data.options["brightness"] > 0
    assert c.student.options == {"weights": "IMAGENET1K_V1"}
    if c.methods:
        assert (c.ce_weight, c.methods[0].name, c.methods[0].weight) == (0.5, "kd", 0.5)
        assert c.methods[0].options == {"temperature": 3.0}
        assert c.teacher.name == "torchvision:resnet50"
