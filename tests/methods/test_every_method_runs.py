"""Every built-in method in a real (short) run: resnet32x4 -> resnet8x4 on CIFAR-100-shaped data."""

import math
from pathlib import Path

import pytest

import kdhub
from kdhub.engine.runner import run

BUILTIN = sorted(
    n for n in kdhub.list_plugins("method") if kdhub.get_plugin("method", n).__module__.startswith("kdhub_methods.")
)
INIT_STAGE = {"ab", "ft", "fsp"}


# A random resnet32x4's last stage has values in the hundreds; FT's paraphraser (no BatchNorm, as in
# RepDistiller) then diverges in its initialisation stage at lr 0.05. With a trained teacher it does not.
FT_RANDOM_TEACHER = pytest.mark.xfail(strict=True, reason="FT's init stage diverges on a random resnet32x4 teacher")
CIFAR_PAIR = [pytest.param(n, marks=FT_RANDOM_TEACHER) if n == "ft" else n for n in BUILTIN]


@pytest.mark.slow
@pytest.mark.parametrize("name", CIFAR_PAIR)
def test_method_runs_on_the_cifar_pair(name):
    options = {"init_epochs": 1} if name in INIT_STAGE else {}
    if name == "crd":
        options["num_negatives"] = 64
    config = {
        "epochs": 1,
        "data": {
            "name": "synthetic",
            "options": {"num_classes": 100, "image_size": 32, "train_size": 128, "test_size": 64},
            "batch_size": 32,
        },
        "student": "resnet8x4",
        "teacher": {"name": "resnet32x4"},
        "methods": [{"name": name, "options": options}],
        "metrics": ["accuracy"],
        "train": {"progress": False},
    }
    result = run(config, track=False)
    terms = {k: v for k, v in result.history[-1].items() if k.startswith(f"loss/{name}")}
    assert terms
    assert all(math.isfinite(v) for v in terms.values()), terms
    assert math.isfinite(result.last_acc)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST is not installed")
@pytest.mark.parametrize("name", BUILTIN)
def test_method_runs_on_fashion_mnist(name, tmp_path):
    options = {"init_epochs": 1} if name in INIT_STAGE else {}
    config = {
        "epochs": 1,
        "data": {"name": "fashion_mnist", "options": {"root": str(tmp_path)}, "batch_size": 64, "train_fraction": 0.02},
        "student": {"name": "cnn", "options": {"width": 8}},
        "teacher": {"name": "cnn", "options": {"width": 8 if name == "fsp" else 16}},  # FSP: equal channels
        "methods": [{"name": name, "options": options}],
        "metrics": ["accuracy"],
        "train": {"progress": False},
    }
    result = run(config, track=False)
    terms = {k: v for k, v in result.history[-1].items() if k.startswith(f"loss/{name}")}
    assert terms
    assert all(math.isfinite(v) for v in terms.values()), terms
