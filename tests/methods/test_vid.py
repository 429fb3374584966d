"""VID: golden negative log-likelihood, trained variances, regressor shapes and the method contract."""

from __future__ import annotations

import math

import pytest
import torch

import kdhub
from kdhub.testing import TINY_TAPS, TinyNet, check_method, forward_outputs, setup_method
from kdhub_methods.vid import inverse_softplus, vid_nll


def test_golden_nll() -> None:
    # sigma^2 = softplus(softplus^-1(5 - eps)) + eps = 5; 0.5 * ((0 - 1)^2 / 5 + ln 5) = 0.904719
    log_scale = torch.full((2,), inverse_softplus(5.0 - 1e-5))
    got = vid_nll(torch.zeros(3, 2, 2, 2), torch.ones(3, 2, 2, 2), log_scale, 1e-5)
    want = 0.5 * (1 / 5 + math.log(5))
    assert want == pytest.approx(0.904719, abs=1e-6)
    torch.testing.assert_close(got, torch.full((3,), want))


def _method_and_outputs(**options: object) -> tuple[kdhub.Method, TinyNet, kdhub.StepOutputs]:
    torch.manual_seed(0)
    method = kdhub.create("method", "vid", **options)
    student, teacher = TinyNet(width=8), TinyNet(width=16).eval()
    images = torch.randn(8, 3, 16, 16)
    setup_method(method, student, teacher, TINY_TAPS, TINY_TAPS, images, 10)
    out = forward_outputs(method, student, teacher, TINY_TAPS, TINY_TAPS, images, torch.arange(8) % 10)
    return method, student, out


def test_variances_are_registered_and_trained() -> None:
    method, student, out = _method_and_outputs()
    names = {name for name, _ in method.named_parameters()}
    assert {f"heads.{k}.log_scale" for k in range(3)} <= names
    for head in method.heads:
        var = torch.nn.functional.softplus(head.log_scale) + 1e-5
        torch.testing.assert_close(var, torch.full_like(var, 5.0))
    before = [head.log_scale.detach().clone() for head in method.heads]
    optimizer = torch.optim.SGD(list(student.parameters()) + list(method.parameters()), lr=0.1)
    method.loss(out).mean().backward()
    for head in method.heads:
        assert head.log_scale.grad is not None
        assert head.log_scale.grad.abs().sum() > 0
    optimizer.step()
    for head, old in zip(method.heads, before, strict=True):
        assert not torch.equal(head.log_scale.detach(), old)


def test_regressors_map_student_to_teacher_channels() -> None:
    method, _, _ = _method_and_outputs(mid_channels=5)
    # TinyNet stage channels: student 8, 16, 32; teacher 16, 32, 64
    for head, (c_s, c_t) in zip(method.heads, [(8, 16), (16, 32), (32, 64)], strict=True):
        first, last = head.regressor[0], head.regressor[-1]
        assert (first.in_channels, first.out_channels, last.out_channels) == (c_s, 5, c_t)
        assert head.log_scale.shape == (c_t,)


def test_init_variance_must_exceed_eps() -> None:
    with pytest.raises(kdhub.ConfigError, match="init_variance must exceed eps"):
        kdhub.create("method", "vid", init_variance=1e-6)


def test_method_contract() -> None:
    check = check_method(kdhub.create("method", "vid"))
    assert check.loss > 0
