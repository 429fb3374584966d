"""FitNet: golden hint loss, regressor sizing from the dry run, stage choice and the method contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kdhub
from kdhub.testing import TINY_TAPS, TinyNet, check_method, setup_method
from kdhub_methods.fitnet import hint_loss


def test_hint_loss_golden() -> None:
    regressed = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]]).view(2, 1, 2, 2)
    target = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).view(2, 1, 2, 2)
    # sample 0: (1 + 4 + 9 + 16) / 4 = 7.5; sample 1: equal maps -> 0
    torch.testing.assert_close(hint_loss(regressed, target), torch.tensor([7.5, 0.0]))
    # its batch mean is nn.MSELoss (RepDistiller's HintLoss)
    torch.testing.assert_close(hint_loss(regressed, target).mean(), nn.functional.mse_loss(regressed, target))


def _setup(**options: object) -> kdhub.Method:
    method = kdhub.create("method", "fitnet", **options)
    images = torch.randn(2, 3, 16, 16)
    setup_method(method, TinyNet(width=8), TinyNet(width=16), TINY_TAPS, TINY_TAPS, images, 10)
    return method


def test_regressor_is_sized_from_the_middle_stage() -> None:
    # TinyNet stages at 16x16 input: (w, 16, 16), (2w, 8, 8), (4w, 4, 4); stage 1 = the middle one
    conv = _setup().regressor.conv
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (16, 32, (1, 1))
    conv = _setup(stage=-1).regressor.conv
    assert (conv.in_channels, conv.out_channels) == (32, 64)


def test_loss_is_zero_for_a_perfect_regression() -> None:
    method = _setup()
    method.eval()  # BatchNorm with running statistics (0, 1): y = x / sqrt(1 + eps)
    with torch.no_grad():
        method.regressor.conv.weight.zero_()
        method.regressor.conv.weight[torch.arange(16), torch.arange(16)] = 1.0
        method.regressor.conv.bias.zero_()
    f_s = [torch.rand(2, 8, 16, 16), torch.rand(2, 16, 8, 8), torch.rand(2, 32, 4, 4)]
    target = torch.cat([f_s[1], torch.zeros(2, 16, 8, 8)], dim=1) / (1 + 1e-5) ** 0.5
    f_t = [torch.rand(2, 16, 16, 16), target, torch.rand(2, 64, 4, 4)]
    out = kdhub.StepOutputs(
        student_logits=torch.zeros(2, 10),
        teacher_logits=torch.zeros(2, 10),
        labels=torch.tensor([0, 1]),
        indices=torch.arange(2),
        student_features={"stages": f_s},
        teacher_features={"stages": f_t},
    )
    torch.testing.assert_close(method.loss(out), torch.zeros(2))


def test_out_of_range_stage_is_incompatible() -> None:
    with pytest.raises(kdhub.IncompatibleError, match="stage index 3 is out of range"):
        _setup(stage=3)


def test_method_contract() -> None:
    check = check_method(kdhub.create("method", "fitnet"))
    assert check.loss > 0
