"""eigenspace: first-layer weight change along the input covariance's eigenvectors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdhub
from kdhub.testing import TinyNet
from kdhub_metrics.eigenspace import conv_patches, conv_positions, eigen_components, first_layer, top_share


def test_golden_example() -> None:
    # Σ = diag(3, 1): v_1 = e_1 (λ = 3), v_2 = e_2 (λ = 1); W = [[1, 0], [0, 2]] -> a = [|W e_1|, |W e_2|] = [1, 2]
    values, a = eigen_components(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.diag(torch.tensor([3.0, 1.0])))
    assert values.tolist() == pytest.approx([3.0, 1.0])
    assert a.tolist() == pytest.approx([1.0, 2.0])
    assert top_share(a, 1) == pytest.approx(1 / 5)  # 1² / (1² + 2²)
    assert math.isnan(top_share(torch.zeros(3), 1))


def test_invariant_under_rotation() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=gen, dtype=torch.float64) * torch.tensor(
        [3.0, 2, 1, 0.5, 0.1], dtype=torch.float64
    )
    w = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    values, a = eigen_components(w, x.T @ x / 200)
    xq = x @ q
    values_q, a_q = eigen_components(w @ q, xq.T @ xq / 200)
    assert torch.allclose(values, values_q)
    assert torch.allclose(a, a_q)


def test_gradient_descent_closed_form() -> None:
    """Linear regression by GD from 0: the component along v_k is (1 - (1 - η λ_k)^t) w*_k."""
    gen = torch.Generator().manual_seed(0)
    n, d, eta, steps = 500, 4, 0.1, 7
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.tensor([2.0, 1.0, 0.5, 0.2], dtype=torch.float64)
    w_star = torch.randn(d, generator=gen, dtype=torch.float64)
    y = x @ w_star
    w = torch.zeros(d, dtype=torch.float64)
    for _ in range(steps):
        w = w - eta * x.T @ (x @ w - y) / n  # gradient of (1/2n) ||Xw - y||²
    sigma = x.T @ x / n
    lam, v = torch.linalg.eigh(sigma)
    lam, v = lam.flip(0), v.flip(1)
    expected = (1 - (1 - eta * lam) ** steps) * (v.T @ w_star)
    assert torch.allclose(v.T @ w, expected, atol=1e-12)
    values, a = eigen_components(w[None], sigma)  # W_0 = 0
    assert torch.allclose(values, lam)
    assert torch.allclose(a, expected.abs(), atol=1e-12)
    assert a[0] / (v[:, 0] @ w_star).abs() > a[-1] / (v[:, -1] @ w_star).abs()  # top direction learned first


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, 3, stride=1, padding=1),
        nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=2),
        nn.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(0, 1)),
        nn.Conv2d(2, 4, 4, padding="same"),
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"),
    ],
)
def test_conv_patches_match_unfold(conv: nn.Conv2d) -> None:
    x = torch.randn(3, conv.in_channels, 9, 8)
    xp = x
    if conv.padding_mode != "zeros":
        xp, pad = F.pad(x, (1, 1, 1, 1), mode=conv.padding_mode), 0
    elif conv.padding == "same":
        xp, pad = F.pad(x, (1, 2, 1, 2)), 0  # kernel 4: the odd pixel goes right / bottom
    else:
        pad = conv.padding
    cols = F.unfold(xp, conv.kernel_size, dilation=conv.dilation, padding=pad, stride=conv.stride)  # [B, d, L]
    expected = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    total = conv_positions(conv, x)
    assert total == expected.shape[0]
    positions = torch.tensor([0, 5, total // 2, total - 1])
    assert torch.equal(conv_patches(conv, x, positions), expected[positions])
    # the patches really are the conv's inputs: W · patch + b is the conv output
    out = conv(x).permute(0, 2, 3, 1).reshape(-1, conv.out_channels)
    w = conv.weight.reshape(conv.out_channels, -1)
    assert torch.allclose(conv_patches(conv, x, torch.arange(total)) @ w.T + conv.bias, out, atol=1e-5)


def test_first_layer() -> None:
    net = TinyNet(10)
    assert first_layer(net)[0] == "stem.conv"
    assert first_layer(net, "fc")[0] == "fc"
    with pytest.raises(kdhub.IncompatibleError):
        first_layer(net, "stem.bn")
    with pytest.raises(kdhub.IncompatibleError):
        first_layer(net, "nope")
    with pytest.raises(kdhub.IncompatibleError):
        first_layer(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)))


def test_metric_on_tiny_net(tiny, fake) -> None:
    metric = kdhub.create("metric", "eigenspace", patches=0, top_k=3, pairs=[(0, -1), (1, 2)])
    ctx = fake.ctx(tiny.student, None, 40)
    metric.start(ctx)
    w0 = tiny.student.stem.conv.weight.detach().clone()
    with torch.no_grad():
        tiny.student.stem.conv.weight.add_(0.1 * torch.randn_like(w0))  # "training"
    result = fake.run(metric, tiny.student, None, tiny.pixels, tiny.labels, batch_size=16, start=False)
    layer = tiny.student.stem.conv
    assert not layer._forward_pre_hooks  # the hook is gone after compute
    # Σ from every im2col patch of the 40 images, computed independently with unfold
    cols = F.unfold(tiny.images, 3, padding=1).transpose(1, 2).reshape(-1, 27).double()
    sigma = cols.T @ cols / cols.shape[0]
    delta = (layer.weight.detach() - w0).reshape(8, -1).double()
    values, a = eigen_components(delta, sigma)
    assert result.scalars["patches"] == 40 * 64
    assert result.tables["eigenspace"]["eigenvalue"] == pytest.approx(values.tolist(), rel=1e-9)
    assert result.tables["eigenspace"]["a"] == pytest.approx(a.tolist(), rel=1e-6, abs=1e-12)
    assert result.scalars["top_share"] == pytest.approx(top_share(a, 3), rel=1e-6)
    assert result.scalars["weight_change"] == pytest.approx(delta.norm().item(), rel=1e-6)
    assert result.scalars["a_top"] == pytest.approx(a[0].item(), rel=1e-6)
    assert result.tables["eigenspace_history"]["epoch"] == [1]
    assert set(result.tables["eigenspace_history"]) == {"epoch", "top_share", "a_1", "a_2", "a_3", "a_27"}


def test_random_patches_history_and_state(tiny, fake) -> None:
    metric = kdhub.create("metric", "eigenspace", patches=100)
    ctx = fake.ctx(tiny.student, None, 40)
    metric.start(ctx)
    r1 = fake.run(metric, tiny.student, None, tiny.pixels, tiny.labels, batch_size=10, start=False, epoch=1)
    assert r1.scalars["patches"] == 100.0  # ceil(100 * 10 / 40) = 25 per batch of 10, 4 batches
    assert r1.scalars["weight_change"] == 0.0
    assert math.isnan(r1.scalars["top_share"])
    with torch.no_grad():
        tiny.student.stem.conv.weight.mul_(1.1)
    r2 = fake.run(metric, tiny.student, None, tiny.pixels, tiny.labels, batch_size=10, start=False, epoch=2)
    assert r2.tables["eigenspace_history"]["epoch"] == [1, 2]
    restored = kdhub.create("metric", "eigenspace", patches=100)
    restored.load_state_dict(metric.state_dict())
    r3 = fake.run(restored, tiny.student, None, tiny.pixels, tiny.labels, batch_size=10, start=False, epoch=2)
    assert r3.scalars["weight_change"] == pytest.approx(r2.scalars["weight_change"])
    assert r3.tables["eigenspace_history"]["epoch"] == [1, 2, 2]


def test_linear_first_layer(fake) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 10))
    x = torch.randn(30, 3, 2, 2)
    metric = kdhub.create("metric", "eigenspace", patches=0)
    ctx = fake.ctx(net, None, 30)
    metric.start(ctx)
    metric.reset(ctx)
    with torch.no_grad():
        net[1].weight.add_(1.0)
        net(x)
    result = metric.compute()
    rows = x.reshape(30, 12).double()
    _values, a = eigen_components(torch.ones(5, 12, dtype=torch.float64), rows.T @ rows / 30)
    assert result.tables["eigenspace"]["a"] == pytest.approx(a.tolist(), rel=1e-6)
