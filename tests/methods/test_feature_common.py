"""Shared pieces of the feature methods: masked BatchNorm, ConvReg sizing, spatial matching, stage choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kdhub
from kdhub_methods._feature_common import ConvReg, MaskedBatchNorm2d, full_precision, match_spatial, resolve_stages


def _pair(channels: int = 3) -> tuple[MaskedBatchNorm2d, nn.BatchNorm2d]:
    torch.manual_seed(0)
    masked, plain = MaskedBatchNorm2d(channels), nn.BatchNorm2d(channels)
    with torch.no_grad():
        masked.weight.uniform_(0.5, 1.5)
        masked.bias.uniform_(-1, 1)
    plain.load_state_dict(masked.state_dict())
    return masked, plain


def test_masked_bn_without_mask_or_all_taught_is_batchnorm() -> None:
    masked, plain = _pair()
    x = torch.randn(6, 3, 4, 5) * 3 + 1
    torch.testing.assert_close(masked(x), plain(x))
    torch.testing.assert_close(masked(x, torch.ones(6)), plain(x))
    # two updates of the running statistics each, with the unbiased variance
    torch.testing.assert_close(masked.running_mean, plain.running_mean)
    torch.testing.assert_close(masked.running_var, plain.running_var)
    masked.eval(), plain.eval()
    torch.testing.assert_close(masked(x, torch.ones(6)), plain(x))


def test_masked_bn_uses_only_taught_samples_and_blocks_their_gradient() -> None:
    masked, plain = _pair()
    x = (torch.randn(6, 3, 4, 4) * 2).requires_grad_(True)
    weight = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    keep = weight.bool()
    y = masked(x, weight)
    torch.testing.assert_close(y[keep], plain(x[keep].detach()))
    torch.testing.assert_close(masked.running_mean, plain.running_mean)
    torch.testing.assert_close(masked.running_var, plain.running_var)
    (y[keep].square().sum()).backward()
    assert x.grad[~keep].abs().max() == 0
    assert x.grad[keep].abs().max() > 0
    # a plain BatchNorm would leak gradient to the dropped samples through its batch statistics
    x2 = x.detach().clone().requires_grad_(True)
    plain(x2)[keep].square().sum().backward()
    assert x2.grad[~keep].abs().max() > 0


def test_masked_bn_with_no_taught_sample_keeps_running_stats() -> None:
    masked, _ = _pair()
    before_mean, before_var = masked.running_mean.clone(), masked.running_var.clone()
    y = masked(torch.randn(4, 3, 2, 2), torch.zeros(4))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(masked.running_mean, before_mean)
    torch.testing.assert_close(masked.running_var, before_var)


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "conv_type"),
    [
        ((16, 8, 8), (32, 4, 4), nn.Conv2d),  # stride-2 3x3 conv
        ((16, 4, 4), (32, 8, 8), nn.ConvTranspose2d),  # 4x4 transposed conv
        ((16, 6, 6), (32, 4, 4), nn.Conv2d),  # 3x3 valid conv
        ((16, 4, 4), (32, 4, 4), nn.Conv2d),  # 1x1 conv
    ],
)
def test_convreg_maps_student_shape_to_teacher_shape(s_shape: tuple, t_shape: tuple, conv_type: type) -> None:
    reg = ConvReg(s_shape, t_shape)
    assert type(reg.conv) is conv_type
    y = reg(torch.randn(2, *s_shape))
    assert tuple(y.shape) == (2, *t_shape)
    assert (y >= 0).all()  # ReLU
    assert (ConvReg(s_shape, t_shape, relu=False)(torch.randn(2, *s_shape)) < 0).any()


def test_convreg_rejects_unsupported_sizes() -> None:
    with pytest.raises(kdhub.IncompatibleError, match="4x4 to a teacher feature of size 6x6"):
        ConvReg((16, 4, 4), (32, 6, 6), who="fitnet")


def test_match_spatial_pools_the_larger_map() -> None:
    big = torch.arange(16.0).view(1, 1, 4, 4)
    small = torch.zeros(1, 2, 2, 2)
    a, b = match_spatial(big, small)
    # 2x2 average pooling of [[0..3],[4..7],...]: (0+1+4+5)/4 = 2.5, ...
    torch.testing.assert_close(a, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert b is small
    b2, a2 = match_spatial(small, big)
    torch.testing.assert_close(a2, a)
    assert b2 is small


def test_resolve_stages() -> None:
    assert resolve_stages(3, 3, None, "at") == [0, 1, 2]
    assert resolve_stages(3, 4, [-2, -1], "at") == [-2, -1]
    with pytest.raises(kdhub.IncompatibleError, match="student has 3 'stages' features and the teacher 4"):
        resolve_stages(3, 4, None, "at")
    with pytest.raises(kdhub.IncompatibleError, match="stage index 3 is out of range for the student"):
        resolve_stages(3, 4, [3], "at")


def test_full_precision_turns_autocast_off() -> None:
    a = torch.randn(4, 4)
    matmul = full_precision(lambda x, y: x @ y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
        assert matmul(a, a).dtype == torch.float32
    torch.testing.assert_close(matmul(a, a), a @ a)
