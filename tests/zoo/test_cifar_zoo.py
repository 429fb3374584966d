"""The CIFAR zoo (RepDistiller / mdistiller architectures): sizes, forward shapes and feature taps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdhub
from kdhub.engine.features import FeatureTaps, dry_run_shapes
from kdhub_zoo.models._common import param_count

# docs/reference-values.md "CIFAR model sizes", in millions (RepDistiller / mdistiller).
REFERENCE_M = {
    "resnet20": 0.28,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_16_2": 0.70,
    "wrn_40_2": 2.26,
    "vgg8": 3.97,
    "vgg13": 9.46,
    "mobilenetv2": 0.81,
    "shufflev1": 0.95,
    "shufflev2": 1.36,
    "resnet50": 23.71,
}

# Exact counts at 100 classes, 3 channels: the ResNet/WRN/VGG ones equal the closed forms below;
# the others are pinned (they match REFERENCE_M, and RepDistiller's 0.81M / 0.95M / 1.36M / 23.71M).
EXACT = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobilenetv2": 812_836,
    "shufflev1": 949_258,
    "shufflev2": 1_355_528,
    "resnet50": 23_705_252,
}
NAMES = list(EXACT)

# Per-sample shapes at 3x32x32: stem, stages (preact_stages and bn_before_relu have the same), pooled.
R16 = ((16, 32, 32), [(16, 32, 32), (32, 16, 16), (64, 8, 8)], 64)
R32 = ((32, 32, 32), [(64, 32, 32), (128, 16, 16), (256, 8, 8)], 256)
VGG = ((64, 32, 32), [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)], 512)


def _wrn(w: int) -> tuple:
    return ((16, 32, 32), [(16 * w, 32, 32), (32 * w, 16, 16), (64 * w, 8, 8)], 64 * w)


SHAPES = {
    **dict.fromkeys(("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"), R16),
    "resnet8x4": R32,
    "resnet32x4": R32,
    **{f"wrn_{d}_{w}": _wrn(w) for d in (16, 40) for w in (1, 2)},
    **{f"vgg{d}": VGG for d in (8, 11, 13, 16, 19)},
    "mobilenetv2": ((16, 16, 16), [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)], 1280),
    "shufflev1": ((24, 32, 32), [(240, 16, 16), (480, 8, 8), (960, 4, 4)], 960),
    "shufflev2": ((24, 32, 32), [(116, 16, 16), (232, 8, 8), (464, 4, 4)], 1024),
    "resnet50": ((64, 32, 32), [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)], 2048),
}
# Models whose stages end in a ReLU module whose input is preact_stages (relu(preact) == stages).
STANDARD = [n for n in NAMES if not n.startswith(("wrn", "mobilenetv2"))]


@pytest.fixture(scope="module")
def zoo() -> dict[str, tuple[kdhub.Model, nn.Module]]:
    """Every CIFAR zoo model, built once for 100 classes, 3 channels, 32x32."""
    torch.manual_seed(0)
    out = {}
    for name in NAMES:
        plugin = kdhub.create("model", name)
        out[name] = (plugin, plugin.build(100, 3, 32))
    return out


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_every_zoo_model_is_registered() -> None:
    names = set(kdhub.list_plugins("model"))
    assert set(NAMES) | {"wrn", "cnn", "mlp", "timm", "torchvision"} <= names


def _resnet_closed_form(depth: int, f: tuple[int, int, int, int], k: int) -> int:
    """Stem conv3x3 + BN; per block two conv3x3 + two BN, a 1x1 conv + BN where channels change; fc."""
    n, total, cin = (depth - 2) // 6, 27 * f[0] + 2 * f[0], f[0]
    for c in f[1:]:
        for _ in range(n):
            total += 9 * cin * c + 2 * c + 9 * c * c + 2 * c + (cin * c + 2 * c if cin != c else 0)
            cin = c
    return total + cin * k + k


def _wrn_closed_form(depth: int, w: int, k: int) -> int:
    """Stem conv3x3(16); per pre-activation block BN + conv3x3 + BN + conv3x3 (+ 1x1 shortcut); BN; fc."""
    n, total, cin = (depth - 4) // 6, 27 * 16, 16
    for c in (16 * w, 32 * w, 64 * w):
        for _ in range(n):
            total += 2 * cin + 9 * cin * c + 2 * c + 9 * c * c + (cin * c if cin != c else 0)
            cin = c
    return total + 2 * cin + cin * k + k


def _vgg_closed_form(cfg: list[list[int]], k: int) -> int:
    """conv3x3 with bias + BN for every conv; one linear 512 -> k."""
    total, cin = 0, 3
    for block in cfg:
        for c in block:
            total += 9 * cin * c + c + 2 * c
            cin = c
    return total + 512 * k + k


def test_closed_form_counts() -> None:
    expected = {
        **{f"resnet{d}": _resnet_closed_form(d, (16, 16, 32, 64), 100) for d in (8, 14, 20, 32, 44, 56, 110)},
        "resnet8x4": _resnet_closed_form(8, (32, 64, 128, 256), 100),
        "resnet32x4": _resnet_closed_form(32, (32, 64, 128, 256), 100),
        **{f"wrn_{d}_{w}": _wrn_closed_form(d, w, 100) for d in (16, 40) for w in (1, 2)},
        "vgg8": _vgg_closed_form([[64], [128], [256], [512], [512]], 100),
        "vgg13": _vgg_closed_form([[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]], 100),
        "vgg19": _vgg_closed_form([[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4], 100),
    }
    assert {n: EXACT[n] for n in expected} == expected


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count(zoo: dict, name: str) -> None:
    count = param_count(zoo[name][1])
    assert count == EXACT[name]
    if name in REFERENCE_M:
        assert abs(count / 1e6 - REFERENCE_M[name]) <= 0.01 * REFERENCE_M[name]


@pytest.mark.parametrize("name", NAMES)
def test_taps_resolve_with_expected_shapes(zoo: dict, images: torch.Tensor, name: str) -> None:
    plugin, net = zoo[name]
    taps = plugin.taps(net)
    shapes, logits = dry_run_shapes(net, taps, images)
    stem, stages, pooled = SHAPES[name]
    assert logits == (100,)
    assert shapes["stem"] == [stem]
    assert shapes["stages"] == stages
    assert shapes["preact_stages"] == stages
    assert shapes["pooled"] == [(pooled,)]
    assert shapes["classifier"] == [(100,)]
    classifier = net.get_submodule(taps["classifier"][0])
    assert isinstance(classifier, nn.Linear)
    assert classifier.in_features == pooled
    if name == "shufflev2":
        assert "bn_before_relu" not in taps  # half of its pre-activation is an identity branch
    else:
        assert shapes["bn_before_relu"] == stages
        assert all(isinstance(net.get_submodule(n), nn.BatchNorm2d) for n in taps["bn_before_relu"])


@pytest.mark.parametrize("name", STANDARD)
def test_preact_is_the_input_of_the_stage_relu(zoo: dict, images: torch.Tensor, name: str) -> None:
    # Train mode, as in distillation: an in-place op after the tap would leave preact without negatives.
    plugin, net = zoo[name]
    net.train()
    with FeatureTaps(net, plugin.taps(net), ["stages", "preact_stages"]) as taps:
        net(images)
        feats = taps.collect()
    for stage, pre in zip(feats["stages"], feats["preact_stages"], strict=True):
        assert pre.min() < 0
        assert stage.min() >= 0
        assert torch.equal(F.relu(pre), stage)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "shufflev2"])
def test_bn_before_relu_outputs_are_not_modified_in_place(zoo: dict, images: torch.Tensor, name: str) -> None:
    """The tapped BN outputs must still equal BN(input) after the whole forward (eval mode: deterministic)."""
    plugin, net = zoo[name]
    bns = plugin.taps(net)["bn_before_relu"]
    net.eval()
    with torch.no_grad(), FeatureTaps(net, {"in": [f"{b}:input" for b in bns], "out": bns}, ["in", "out"]) as taps:
        net(images)
        feats = taps.collect()
        for bn, x, y in zip(bns, feats["in"], feats["out"], strict=True):
            assert y.min() < 0
            torch.testing.assert_close(net.get_submodule(bn)(x), y)


@pytest.mark.parametrize("name", ["wrn_16_1", "wrn_40_2"])
def test_wrn_preact_is_the_bn_of_the_stage(zoo: dict, images: torch.Tensor, name: str) -> None:
    """WRN is pre-activation: stages are residual sums and preact_stages = BN(stage), as RepDistiller reads them."""
    plugin, net = zoo[name]
    taps = plugin.taps(net)
    net.eval()
    with torch.no_grad(), FeatureTaps(net, taps, ["stages", "preact_stages", "pooled"]) as rec:
        net(images)
        feats = rec.collect()
        for bn, stage, pre in zip(taps["bn_before_relu"], feats["stages"], feats["preact_stages"], strict=True):
            assert stage.min() < 0
            torch.testing.assert_close(net.get_submodule(bn)(stage), pre)
    # The last preact, activated and averaged over space, is the pooled vector.
    torch.testing.assert_close(F.relu(feats["preact_stages"][-1]).mean(dim=(2, 3)), feats["pooled"][0])


def test_mobilenetv2_stages_are_linear_bottlenecks(zoo: dict, images: torch.Tensor) -> None:
    plugin, net = zoo["mobilenetv2"]
    taps = plugin.taps(net)
    assert taps["preact_stages"] == taps["stages"]
    with FeatureTaps(net, taps, ["stages"]) as rec:
        net(images)
        assert all(t.min() < 0 for t in rec.collect()["stages"])


def test_shufflev2_unit_equals_the_reference_formula() -> None:
    """kdhub activates after the shuffle; RepDistiller's ``shuffle(cat(x1, relu(branch)))`` is the same for x >= 0."""
    from kdhub_zoo.models.shufflenet import ShuffleV2Block

    torch.manual_seed(0)
    unit = ShuffleV2Block(8).eval()
    x = torch.rand(2, 8, 5, 5)  # a unit's input comes from a ReLU
    x1, x2 = x[:, :4], x[:, 4:]
    branch = unit.bn3(unit.conv3(unit.bn2(unit.conv2(F.relu(unit.bn1(unit.conv1(x2)))))))
    reference = torch.cat([x1, F.relu(branch)], 1).view(2, 2, 4, 5, 5).transpose(1, 2).reshape(2, 8, 5, 5)
    torch.testing.assert_close(unit(x), reference)


@pytest.mark.parametrize("name", NAMES)
def test_one_channel_28x28(name: str) -> None:
    plugin = kdhub.create("model", name)
    net = plugin.build(10, 1, 28)
    shapes, logits = dry_run_shapes(net, plugin.taps(net), torch.randn(2, 1, 28, 28))
    assert logits == (10,)
    assert shapes["pooled"] == [(SHAPES[name][2],)]
    assert [s[0] for s in shapes["stages"]] == [s[0] for s in SHAPES[name][1]]


def test_repdistiller_state_dict_names() -> None:
    """Module names follow RepDistiller's, so its checkpoints load (added ReLU/pool/flatten hold no parameters)."""
    keys = {n: set(kdhub.create("model", n).build(100, 3, 32).state_dict()) for n in ("resnet8x4", "wrn_16_2", "vgg8")}
    assert {"conv1.weight", "layer1.0.downsample.0.weight", "layer3.0.bn2.running_mean", "fc.bias"} <= keys["resnet8x4"]
    assert {"block1.layer.0.convShortcut.weight", "block3.layer.1.bn2.weight", "bn1.weight", "fc.weight"} <= keys[
        "wrn_16_2"
    ]
    assert {"block0.0.weight", "block0.0.bias", "block4.1.running_var", "classifier.weight"} <= keys["vgg8"]


def test_wrn_variant_plugin() -> None:
    plugin = kdhub.create("model", "wrn:28_10")
    assert plugin.options.variant == "28_10"
    assert param_count(kdhub.create("model", "wrn:16_2").build(100, 3, 32)) == EXACT["wrn_16_2"]
    # WRN-28-10 at 100 classes: 36.5M in Zagoruyko & Komodakis (Table 1: 36.5M).
    assert _wrn_closed_form(28, 10, 100) == 36_536_884
    with pytest.raises(kdhub.ConfigError, match="6n\\+4"):
        kdhub.create("model", "wrn:27_2")
    with pytest.raises(kdhub.ConfigError, match="depth"):
        kdhub.create("model", "wrn:deep")


def test_wrn_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    net = kdhub.create("model", "wrn_16_1", drop_rate=0.3).build(10, 3, 32)
    x = torch.randn(2, 3, 32, 32)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


def test_vgg_pools_after_block3_only_from_64_pixels() -> None:
    plugin = kdhub.create("model", "vgg8")
    net = plugin.build(10, 3, 64)
    shapes, _ = dry_run_shapes(net, plugin.taps(net), torch.randn(2, 3, 64, 64))
    assert shapes["stages"] == [(128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4)]


def test_mobilenetv2_width_option() -> None:
    half = kdhub.create("model", "mobilenetv2").build(100, 3, 32)
    full = kdhub.create("model", "mobilenetv2", width=1.0).build(100, 3, 32)
    assert param_count(half) == EXACT["mobilenetv2"]
    assert param_count(full) > 2 * param_count(half)


def test_docstrings_name_the_model() -> None:
    doc = kdhub.get_plugin("model", "resnet32x4").__doc__
    assert doc.splitlines()[0].startswith("CIFAR ResNet-32x4")
    assert "student: resnet32x4" in doc
    assert "bn_before_relu" in doc


@pytest.mark.parametrize("method", ["ofd", "reviewkd", "fitnet", "at"])
def test_feature_methods_run_between_zoo_models(zoo: dict, method: str) -> None:
    """The zoo's taps meet the feature methods' needs: wrn_16_2 teaches resnet8x4 (different families)."""
    from kdhub.testing import check_method

    s_plugin, student = zoo["resnet8x4"]
    t_plugin, teacher = zoo["wrn_16_2"]
    student.train()
    teacher.eval()
    result = check_method(
        kdhub.create("method", method),
        student,
        teacher,
        s_plugin.taps(student),
        t_plugin.taps(teacher),
        num_classes=100,
        batch_size=4,
        image_size=32,
    )
    assert torch.isfinite(result.loss)
    assert result.loss > 0


def test_docs_list_every_model() -> None:
    """docs/models.md names every model plugin of the zoo."""
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "models.md").read_text()
    zoo = [n for n in kdhub.list_plugins("model") if kdhub.get_plugin("model", n).__module__.startswith("kdhub_zoo.")]
    assert len(zoo) >= len(NAMES) + 5  # + wrn, cnn, mlp, timm, torchvision
    missing = [n for n in zoo if f"`{n}`" not in doc and f"`{n}:" not in doc]
    assert not missing
