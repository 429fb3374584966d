"""``timm:<name>`` models: built for the run's classes, channels and size; taps from ``feature_info``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kdhub
from kdhub.engine.features import dry_run_shapes
from kdhub_zoo.models.timm_models import timm_taps


def test_variant_comes_from_the_name() -> None:
    plugin = kdhub.create("model", "timm:resnet10t")
    assert plugin.options.variant == "resnet10t"
    assert plugin.options.pretrained is False


@pytest.mark.parametrize("in_channels", [3, 1])
def test_resnet_taps_and_shapes(in_channels: int) -> None:
    plugin = kdhub.create("model", "timm:test_resnet")
    net = plugin.build(10, in_channels, 32)
    taps = plugin.taps(net)
    assert taps == {
        "stem": ["act1"],
        "stages": ["layer1", "layer2", "layer3", "layer4"],
        "pooled": ["fc:input"],
        "classifier": ["fc"],
    }
    shapes, logits = dry_run_shapes(net, taps, torch.randn(2, in_channels, 32, 32))
    assert logits == (10,)
    # ImageNet strides: the stem halves 32 -> 16, the stages reach 8, 4, 2, 1.
    assert [s[1:] for s in shapes["stem"] + shapes["stages"]] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert shapes["pooled"] == [(net.fc.in_features,)]
    assert shapes["classifier"] == [(10,)]
    assert next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels == in_channels


def test_vit_gets_the_image_size_and_token_stages() -> None:
    plugin = kdhub.create("model", "timm:test_vit")
    net = plugin.build(10, 3, 32)
    taps = plugin.taps(net)
    assert "stem" not in taps
    assert taps["pooled"] == ["head:input"]
    shapes, logits = dry_run_shapes(net, taps, torch.randn(2, 3, 32, 32))
    patch = net.patch_embed.patch_size[0]
    tokens = (32 // patch) ** 2 + 1  # patches + class token
    assert all(s == (tokens, net.embed_dim) for s in shapes["stages"])
    assert shapes["pooled"] == [(net.embed_dim,)]
    assert logits == (10,)


def test_kwargs_reach_timm() -> None:
    net = kdhub.create("model", "timm:test_efficientnet", kwargs={"drop_rate": 0.25}).build(7, 3, 32)
    assert net.drop_rate == 0.25
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert timm_taps(net)["stages"][0] == "blocks.0"  # no stem split: all entries are 'blocks.*'


def test_kdhub_owned_kwargs_are_refused() -> None:
    with pytest.raises(kdhub.ConfigError, match="num_classes"):
        kdhub.create("model", "timm:resnet18", kwargs={"num_classes": 3})


def test_unknown_model_suggests_names() -> None:
    with pytest.raises(kdhub.ConfigError, match="resnet18"):
        kdhub.create("model", "timm:resnet19").build(10, 3, 32)


def test_stem_split_needs_a_separate_family() -> None:
    class Fake(nn.Module):
        def __init__(self, modules: list[str]) -> None:
            super().__init__()
            self.feature_info = [{"module": m, "num_chs": 1, "reduction": 1} for m in modules]
            self.fc = nn.Linear(4, 2)

        def get_classifier(self) -> nn.Module:
            return self.fc

    assert timm_taps(Fake(["stem", "stages.0", "stages.1"]))["stem"] == ["stem"]
    assert "stem" not in timm_taps(Fake(["stages.0", "stages.1", "stages.2"]))
    assert timm_taps(Fake(["stages.0", "stages.1"])) == {
        "stages": ["stages.0", "stages.1"],
        "pooled": ["fc:input"],
        "classifier": ["fc"],
    }
