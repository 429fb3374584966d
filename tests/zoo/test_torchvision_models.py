"""``torchvision:<name>`` models: classes, channels, taps per family, first-conv adaptation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kdhub
from kdhub.engine.features import dry_run_shapes
from kdhub_zoo.models._common import param_count
from kdhub_zoo.models.torchvision_models import _adapt_first_conv


@pytest.fixture(scope="module")
def resnet18() -> tuple[kdhub.Model, nn.Module]:
    plugin = kdhub.create("model", "torchvision:resnet18")
    return plugin, plugin.build(10, 3, 32)


def test_resnet18_size(resnet18: tuple) -> None:
    # torchvision's resnet18 has 11,689,512 parameters with 1000 classes; the fc is 512*1000 + 1000.
    # With 10 classes: 11,689,512 - 513,000 + 5,130 = 11,181,642.
    assert param_count(resnet18[1]) == 11_181_642


def test_resnet18_taps(resnet18: tuple) -> None:
    plugin, net = resnet18
    taps = plugin.taps(net)
    assert taps == {
        "stem": ["maxpool"],
        "stages": ["layer1", "layer2", "layer3", "layer4"],
        "pooled": ["fc:input"],
        "classifier": ["fc"],
    }
    shapes, logits = dry_run_shapes(net, taps, torch.randn(2, 3, 32, 32))
    assert shapes["stem"] == [(64, 8, 8)]  # stride-2 conv and max-pool: 32 -> 8
    assert shapes["stages"] == [(64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)]
    assert shapes["pooled"] == [(512,)]
    assert logits == (10,)


def test_one_channel_replaces_the_first_conv() -> None:
    plugin = kdhub.create("model", "torchvision:resnet18")
    net = plugin.build(10, 1, 28)
    assert net.conv1.in_channels == 1
    assert net.conv1.kernel_size == (7, 7)
    assert net.conv1.stride == (2, 2)
    # conv1 loses 64 * 2 * 7 * 7 = 6,272 weights.
    assert param_count(net) == 11_181_642 - 6_272
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("in_channels", [1, 2, 5])
def test_pretrained_first_conv_keeps_the_response_to_grey_images(in_channels: int) -> None:
    """Adapted kernels = mean RGB kernel * 3 / C, so a constant grey image gives the same response."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=True))
    grey = torch.rand(1, 1, 6, 6)
    before = net(grey.expand(1, 3, 6, 6)).detach()
    _adapt_first_conv(net, in_channels, pretrained=True)
    assert net[0].in_channels == in_channels
    torch.testing.assert_close(net(grey.expand(1, in_channels, 6, 6)), before)


@pytest.mark.parametrize(
    ("variant", "roles", "stages"),
    [
        ("regnet_x_400mf", {"stem", "stages", "pooled", "classifier"}, 4),
        ("shufflenet_v2_x0_5", {"stem", "stages", "pooled", "classifier"}, 3),
        ("mobilenet_v3_small", {"pooled", "classifier"}, 0),
        ("squeezenet1_1", set(), 0),  # a conv classifier: no linear layer to tap
    ],
)
def test_roles_per_family(variant: str, roles: set, stages: int) -> None:
    plugin = kdhub.create("model", f"torchvision:{variant}")
    net = plugin.build(10, 3, 32)
    taps = plugin.taps(net)
    assert set(taps) == roles
    shapes, logits = dry_run_shapes(net, taps, torch.randn(2, 3, 32, 32))
    assert logits == (10,)
    assert len(shapes.get("stages", [])) == stages
    if "pooled" in taps:
        assert shapes["pooled"] == [(net.get_submodule(taps["classifier"][0]).in_features,)]


@pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet")
def test_googlenet_trains_without_aux_heads() -> None:
    net = kdhub.create("model", "torchvision:googlenet").build(10, 3, 32).train()
    out = net(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 10)


def test_bad_options() -> None:
    with pytest.raises(kdhub.ConfigError, match="resnet18"):
        kdhub.create("model", "torchvision:resnet19").build(10, 3, 32)
    with pytest.raises(kdhub.ConfigError, match="num_classes"):
        kdhub.create("model", "torchvision:resnet18", kwargs={"num_classes": 3})
