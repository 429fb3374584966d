"""Weights users already have: peer CIFAR checkpoints, torchvision and timm caches and files, safetensors.

No network here: every path is exercised on files written by the test in the layouts the real
downloads leave (torch hub's cache, the Hugging Face cache, RepDistiller's and mdistiller's
checkpoints).
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save_file

import kdhub
from kdhub.engine.checkpoint import load_weights
from kdhub.engine.features import dry_run_shapes
from kdhub_zoo.models._common import param_count

# sha256 (16 hex) of "name:shape;" over the state_dict of each CIFAR-100 model as defined by
# HobbitLong/RepDistiller (models/, commit b84f547) and megvii-research/mdistiller
# (mdistiller/models/cifar, commit a08d46f) -- both give the same value for every model, and the
# logits of their nets and kdhub's agree on the same weights.
PEER_SIGNATURES = {
    "resnet8": "bc2df1d0b42e5efe",
    "resnet14": "7a9d89e526d862cf",
    "resnet20": "52e25e7f1687126d",
    "resnet32": "93d822795aaae37f",
    "resnet44": "9630b790e257e340",
    "resnet56": "d0905f57cb884d5b",
    "resnet110": "ad0e1940b5f6667e",
    "resnet8x4": "15df9cbdd6704a13",
    "resnet32x4": "240a86f78109b11e",
    "resnet50": "68f6787dfd4e3cc8",
    "wrn_16_1": "bde83448eb45b5e2",
    "wrn_16_2": "1007df40ec2d4c97",
    "wrn_40_1": "4736b63abb94e729",
    "wrn_40_2": "03f8a11f5cae5185",
    "vgg8": "838b9d50600bfd83",
    "vgg11": "b192ddfc331766fb",
    "vgg13": "848bc2b803c90015",
    "vgg16": "0c3de9dc0dfae629",
    "vgg19": "295d24e6edace810",
    "mobilenetv2": "b517848cf3b25f95",
    "shufflev1": "c513afdeb7ab4cc6",
    "shufflev2": "d2362e9f49da5116",
}
MDISTILLER_MOBILENETV1 = "7174ac89f52d139b"  # mdistiller/models/imagenet/mobilenetv1.py, 1000 classes


def signature(state: dict[str, torch.Tensor]) -> str:
    return hashlib.sha256("".join(f"{k}:{tuple(v.shape)};" for k, v in state.items()).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(PEER_SIGNATURES))
def test_cifar_zoo_has_the_peers_parameter_names_and_shapes(name):
    net = kdhub.create("model", name).build(100, 3, 32)
    assert signature(net.state_dict()) == PEER_SIGNATURES[name]


def test_repdistiller_and_mdistiller_checkpoints_load_as_teachers(tmp_path, mlflow_uri):
    torch.manual_seed(0)
    theirs = kdhub.create("model", "resnet8").build(10, 3, 32)
    optimizer = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    theirs(torch.randn(4, 3, 32, 32)).sum().backward()
    optimizer.step()
    # RepDistiller's train_teacher.py saves this dict; mdistiller's teachers are loaded from its "model"
    state = {"epoch": 240, "model": theirs.state_dict(), "accuracy": torch.tensor(72.34)}
    torch.save({**state, "optimizer": optimizer.state_dict()}, tmp_path / "ckpt_epoch_240.pth")
    torch.save({"model": theirs.state_dict()}, tmp_path / "student_best")
    for file in ("ckpt_epoch_240.pth", "student_best"):
        ours = kdhub.create("model", "resnet8").build(10, 3, 32)
        load_weights(ours, tmp_path / file, "teacher.weights")
        for key, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), key
    from kdhub.engine.runner import run

    config = {
        "epochs": 1,
        "data": {"name": "synthetic", "options": {"num_classes": 10, "train_size": 64, "test_size": 32}},
        "student": {"name": "resnet8"},
        "teacher": {"name": "resnet8", "weights": str(tmp_path / "ckpt_epoch_240.pth")},
        "methods": ["kd"],
        "metrics": ["accuracy"],
        "train": {"progress": False},
    }
    result = run(config, track=False)
    theirs.eval()
    test = kdhub.create("dataset", "synthetic", num_classes=10, train_size=64, test_size=32).load().test
    with torch.no_grad():
        x = (test.images.float() / 255 - 0.5) / 0.29
        expected = (theirs(x).argmax(1) == test.labels).float().mean().item() * 100
    assert result.metrics["test/accuracy/teacher_acc"] == pytest.approx(expected)


def test_safetensors_files_load_through_load_weights(tmp_path):
    net = kdhub.create("model", "resnet8").build(10, 3, 32)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "w.safetensors")
    other = kdhub.create("model", "resnet8").build(10, 3, 32)
    load_weights(other, tmp_path / "w.safetensors", "teacher.weights")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values(), strict=True))
    (tmp_path / "bad.safetensors").write_bytes(b"nonsense")
    with pytest.raises(kdhub.KdhubError, match="not a readable safetensors file"):
        load_weights(other, tmp_path / "bad.safetensors", "teacher.weights")


# torchvision -----------------------------------------------------------------------------------


def test_torchvision_named_weights_come_from_torch_hubs_cache(tmp_path, monkeypatch):
    from torchvision import models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = models.resnet18()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    net = kdhub.create("model", "torchvision:resnet18", weights="IMAGENET1K_V1").build(10, 3, 32)
    assert torch.equal(net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert net.fc.out_features == 10  # the ImageNet head is replaced for the run's classes
    grey = kdhub.create("model", "torchvision:resnet18", weights="DEFAULT").build(10, 1, 32)
    assert torch.allclose(grey.conv1.weight[:, 0], reference.conv1.weight.mean(1) * 3)  # mean kernel x 3 / C


def test_torchvision_without_the_cached_file_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(kdhub.KdhubError) as err:
        kdhub.create("model", "torchvision:resnet34", weights="IMAGENET1K_V1").build(10, 3, 32)
    text = str(err.value)
    assert "resnet34-b627a593.pth is not in torch hub's cache" in text
    assert str(tmp_path / "hub" / "checkpoints") in text
    with pytest.raises(kdhub.ConfigError, match="did you mean IMAGENET1K_V1"):
        kdhub.create("model", "torchvision:resnet34", weights="IMAGENET1K_V9").build(10, 3, 32)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_weights_file_with_another_head(tmp_path, suffix):
    from torchvision import models

    reference = models.resnet18(num_classes=200)  # e.g. a CUB-200 checkpoint
    path = tmp_path / f"resnet18_cub{suffix}"
    if suffix == ".pth":
        torch.save({"model": reference.state_dict()}, path)
    else:
        save_file(reference.state_dict(), path)
    plugin = kdhub.create("model", "torchvision:resnet18", weights_file=str(path), weights_classes=200)
    same = plugin.build(200, 3, 32)
    assert torch.equal(same.fc.weight, reference.fc.weight)
    other = plugin.build(10, 3, 32)
    assert torch.equal(other.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert other.fc.out_features == 10
    with pytest.raises(kdhub.IncompatibleError, match="do not fit"):
        kdhub.create("model", "torchvision:resnet18", weights_file=str(path)).build(10, 3, 32)  # says 1000 classes


# timm -----------------------------------------------------------------------------------------


def test_timm_pretrained_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf
    import timm

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    reference = timm.create_model("resnet10t")
    repo = tmp_path / "models--timm--resnet10t.c3_in1k"  # what a download leaves in $HF_HOME/hub
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    weights = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(weights, repo / "snapshots" / "0123abc" / "model.safetensors")
    net = kdhub.create("model", "timm:resnet10t.c3_in1k", pretrained=True).build(10, 3, 32)
    assert torch.equal(net.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert net.fc.out_features == 10


def test_timm_pretrained_file(tmp_path):
    import timm

    reference = timm.create_model("resnet10t")
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "checkpoint.pth")
    net = kdhub.create("model", "timm:resnet10t", pretrained_file=str(tmp_path / "checkpoint.pth")).build(10, 1, 32)
    assert torch.equal(net.layer2[0].conv2.weight, reference.layer2[0].conv2.weight)
    assert net.conv1[0].in_channels == 1  # timm adapted the stem to one channel
    with pytest.raises(kdhub.KdhubError, match=r"pretrained_file .* does not exist"):
        kdhub.create("model", "timm:resnet10t", pretrained_file=str(tmp_path / "none.pth")).build(10, 3, 32)


# MobileNetV1 ----------------------------------------------------------------------------------


def test_mobilenetv1_is_mdistillers():
    plugin = kdhub.create("model", "mobilenetv1")
    net = plugin.build(1000, 3, 224)
    assert param_count(net) == 4_231_976  # mdistiller's MobileNetV1 with 1000 classes
    assert signature(net.state_dict()) == MDISTILLER_MOBILENETV1
    shapes, logits = dry_run_shapes(net, plugin.taps(net), torch.randn(2, 3, 224, 224))
    assert shapes["stages"] == [(128, 56, 56), (256, 28, 28), (512, 14, 14), (1024, 7, 7)]
    assert shapes["preact_stages"] == shapes["stages"]
    assert shapes["pooled"] == [(1024,)]
    assert logits == (1000,)


def test_mobilenetv1_preactivations_are_taken_before_the_relu():
    from kdhub.engine.features import FeatureTaps

    plugin = kdhub.create("model", "mobilenetv1")
    net = plugin.build(10, 3, 64).eval()
    with FeatureTaps(net, plugin.taps(net), ["stages", "preact_stages"]) as taps:
        net(torch.randn(2, 3, 64, 64))
        feats = taps.collect()
    for pre, post in zip(feats["preact_stages"], feats["stages"], strict=True):
        assert pre.min() < 0
        assert torch.equal(post, pre.relu())
