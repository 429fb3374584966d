"""The tiny-image models ``cnn`` and ``mlp``: sizes, taps at 8x8 and 28x28, and real training on digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kdhub
from kdhub.engine.features import FeatureTaps, dry_run_shapes
from kdhub_zoo.models._common import param_count


def _cnn_count(width: int, depth: int, in_channels: int, classes: int) -> int:
    """Stem conv3x3 + BN; stage i: conv3x3 (c_in -> c) + BN + conv3x3 (c -> c) + BN; fc."""
    total, cin = 9 * in_channels * width + 2 * width, width
    for i in range(depth):
        c = width * 2**i
        total += 9 * cin * c + 2 * c + 9 * c * c + 2 * c
        cin = c
    return total + cin * classes + classes


def test_cnn_parameter_counts() -> None:
    # width 8, depth 3, 1 channel, 10 classes, by hand:
    # stem 9*1*8 + 16 = 88; stage1 2*(9*8*8) + 32 = 1,184; stage2 9*8*16 + 9*16*16 + 64 = 3,520;
    # stage3 9*16*32 + 9*32*32 + 128 = 13,952; fc 32*10 + 10 = 330; total 19,074.
    assert _cnn_count(8, 3, 1, 10) == 19_074
    for width, depth in ((8, 3), (32, 3), (16, 2), (4, 4)):
        net = kdhub.create("model", "cnn", width=width, depth=depth).build(10, 1, 8)
        assert param_count(net) == _cnn_count(width, depth, 1, 10)
    assert param_count(kdhub.create("model", "cnn", width=32).build(10, 1, 8)) == 297_450


def test_mlp_parameter_count() -> None:
    # 8x8 digits, hidden [128, 64] with BN (linear layers without bias):
    # 64*128 + 2*128 = 8,448; 128*64 + 2*64 = 8,320; fc 64*10 + 10 = 650; total 17,418.
    assert param_count(kdhub.create("model", "mlp").build(10, 1, 8)) == 17_418
    # Without BN the hidden linear layers get biases: 64*128+128 + 128*64+64 + 650 = 17,226.
    assert param_count(kdhub.create("model", "mlp", batch_norm=False).build(10, 1, 8)) == 17_226


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [8, 28])
def test_cnn_taps_at_8_and_28_pixels(depth: int, size: int) -> None:
    plugin = kdhub.create("model", "cnn", width=4, depth=depth)
    net = plugin.build(10, 1, size)
    taps = plugin.taps(net)
    shapes, logits = dry_run_shapes(net, taps, torch.randn(2, 1, size, size))
    sides = [size]
    for _ in range(depth - 1):
        sides.append((sides[-1] + 1) // 2)  # padded stride-2 conv: ceil(n / 2)
    stages = [(4 * 2**i, s, s) for i, s in enumerate(sides)]
    assert logits == (10,)
    assert shapes["stem"] == [(4, size, size)]
    assert shapes["stages"] == shapes["preact_stages"] == shapes["bn_before_relu"] == stages
    assert shapes["pooled"] == [(4 * 2 ** (depth - 1),)]
    assert shapes["classifier"] == [(10,)]


def test_cnn_preact_is_the_input_of_the_stage_relu() -> None:
    torch.manual_seed(0)
    plugin = kdhub.create("model", "cnn", width=8)
    net = plugin.build(10, 3, 8).train()
    with FeatureTaps(net, plugin.taps(net), ["stages", "preact_stages"]) as rec:
        net(torch.randn(4, 3, 8, 8))
        feats = rec.collect()
    for stage, pre in zip(feats["stages"], feats["preact_stages"], strict=True):
        assert pre.min() < 0
        assert torch.equal(F.relu(pre), stage)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_mlp_taps(batch_norm: bool) -> None:
    torch.manual_seed(0)
    plugin = kdhub.create("model", "mlp", hidden=[32, 16, 8], batch_norm=batch_norm)
    net = plugin.build(10, 1, 28)
    taps = plugin.taps(net)
    assert ("bn_before_relu" in taps) is batch_norm
    shapes, logits = dry_run_shapes(net, taps, torch.randn(2, 1, 28, 28))
    assert logits == (10,)
    assert shapes["stages"] == shapes["preact_stages"] == [(32,), (16,), (8,)]
    assert shapes["pooled"] == [(8,)]
    net.train()
    with FeatureTaps(net, taps, ["stages", "preact_stages", "pooled"]) as rec:
        net(torch.randn(4, 1, 28, 28))
        feats = rec.collect()
    for stage, pre in zip(feats["stages"], feats["preact_stages"], strict=True):
        assert pre.min() < 0
        assert torch.equal(F.relu(pre), stage)
    assert feats["pooled"][0] is feats["stages"][-1]


def test_options_are_validated() -> None:
    from kdhub.registry.loading import get_registry

    registry = get_registry()
    with pytest.raises(kdhub.ConfigError, match="depth"):
        registry.options("model", "cnn", {"depth": 5}, "student.options")
    with pytest.raises(kdhub.ConfigError, match="hidden"):
        registry.options("model", "mlp", {"hidden": []}, "student.options")
    with pytest.raises(kdhub.ConfigError, match="unknown key"):
        registry.options("model", "cnn", {"widht": 8}, "student.options")


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.from_numpy(raw.images).float().unsqueeze(1) / 16.0
    x = (x - 0.3) / 0.4
    y = torch.from_numpy(raw.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.mark.parametrize(("name", "options"), [("cnn", {"width": 8}), ("mlp", {})])
def test_small_models_learn_digits_in_seconds(name: str, options: dict) -> None:
    """A plain loop (3 epochs, SGD) brings both demo students above 90% on held-out digits."""
    torch.manual_seed(0)
    xtr, ytr, xte, yte = _digits()
    net = kdhub.create("model", name, **options).build(10, 1, 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        net.train()
        for i in range(0, len(ytr), 64):
            loss = F.cross_entropy(net(xtr[i : i + 64]), ytr[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
    assert acc > 0.9, acc


@pytest.mark.slow
def test_engine_run_with_feature_methods_on_digits(tiny_config: dict) -> None:
    """A real 1-epoch run: cnn teacher, cnn student, OFD (preact + bn_before_relu) and AT (stages) via the engine."""
    from kdhub.engine.runner import run

    config = dict(
        tiny_config,
        epochs=1,
        teacher={"name": "cnn", "options": {"width": 16}},
        ce_weight=1.0,
        methods=[{"name": "ofd"}, {"name": "at"}],
    )
    result = run(config)
    assert 0 <= result.last_acc <= 100
