"""AB: golden activation-boundary loss, stage weights, the initialisation stage and the method contract."""

from __future__ import annotations

import pytest
import torch

import kdhub
from kdhub.testing import TINY_TAPS, TinyNet, check_method, forward_outputs, init_losses, setup_method
from kdhub_methods.ab import alternative_l2


def test_alternative_l2_golden_by_hand() -> None:
    # margin 1: s=-2,t<=0 -> 0 (already off beyond the margin); s=-.5,t<=0 -> (s+1)^2 = .25;
    # s=.5,t>0 -> (s-1)^2 = .25; s=2,t>0 -> 0  => sum .5
    source = torch.tensor([-2.0, -0.5, 0.5, 2.0]).view(1, 4, 1, 1)
    target = torch.tensor([-1.0, -1.0, 1.0, 1.0]).view(1, 4, 1, 1)
    torch.testing.assert_close(alternative_l2(source, target, 1.0), torch.tensor([0.5]))
    # margin 0.25: s=-.5 is now beyond the margin -> 0; s=.5,t>0 -> 0; s=2 -> 0 => 0
    torch.testing.assert_close(alternative_l2(source, target, 0.25), torch.tensor([0.0]))


def _tiny(**options: object) -> tuple[kdhub.Method, TinyNet, TinyNet, torch.Tensor]:
    torch.manual_seed(0)
    method = kdhub.create("method", "ab", **options)
    student, teacher = TinyNet(width=8), TinyNet(width=16).eval()
    images = torch.randn(8, 3, 16, 16)
    setup_method(method, student, teacher, TINY_TAPS, TINY_TAPS, images, 10)
    return method, student, teacher, images


def test_stage_weights_and_scale_golden() -> None:
    # equal student and teacher shapes -> identity connectors; two stages weigh 2^-1 and 2^0, times 3/1000
    method = kdhub.create("method", "ab", stages=[0, 1], main_loss=True)
    net = TinyNet(width=8)
    setup_method(method, net, TinyNet(width=8), TINY_TAPS, TINY_TAPS, torch.randn(2, 3, 16, 16), 10)
    source = torch.tensor([-2.0, -0.5, 0.5, 2.0]).view(1, 4, 1, 1)  # per-stage sum 0.5 (see above)
    target = torch.tensor([-1.0, -1.0, 1.0, 1.0]).view(1, 4, 1, 1)
    out = kdhub.StepOutputs(
        student_logits=torch.zeros(1, 10),
        teacher_logits=torch.zeros(1, 10),
        labels=torch.tensor([0]),
        indices=torch.arange(1),
        student_features={"preact_stages": [source, source, source]},
        teacher_features={"preact_stages": [target, target, target]},
    )
    want = 3 / 1000 * (0.5 * 0.5 + 1.0 * 0.5)  # 0.00225
    torch.testing.assert_close(method.loss(out), torch.tensor([want]))
    torch.testing.assert_close(method.init_loss(out), torch.tensor(want))


def test_connectors_only_where_shapes_differ() -> None:
    method, *_ = _tiny()
    assert [type(c).__name__ for c in method.connectors] == ["ConvReg"] * 3
    method = kdhub.create("method", "ab")
    setup_method(method, TinyNet(width=8), TinyNet(width=8), TINY_TAPS, TINY_TAPS, torch.randn(2, 3, 16, 16), 10)
    assert [type(c).__name__ for c in method.connectors] == ["_Identity"] * 3
    assert list(method.parameters()) == []


def test_main_stage_loss_is_zero_by_default() -> None:
    method, student, teacher, images = _tiny()
    assert method.init_epochs == 30
    assert kdhub.create("method", "ab", init_epochs=5).init_epochs == 5
    out = forward_outputs(method, student, teacher, TINY_TAPS, TINY_TAPS, images, torch.arange(8) % 10)
    torch.testing.assert_close(method.loss(out), torch.zeros(8))
    assert method.init_loss(out) > 0


def test_init_loss_decreases_on_tinynet() -> None:
    method, student, teacher, images = _tiny()
    labels = torch.arange(8) % 10
    optimizer = torch.optim.SGD(list(student.parameters()) + list(method.parameters()), lr=0.05, momentum=0.9)
    losses = init_losses(method, student, teacher, images, labels, optimizer)
    assert losses[-1] < 0.5 * losses[0], losses


def test_needs_preactivation_features() -> None:
    taps = {k: v for k, v in TINY_TAPS.items() if k != "preact_stages"}
    with pytest.raises(kdhub.IncompatibleError, match="'preact_stages'"):
        setup_method(kdhub.create("method", "ab"), TinyNet(), TinyNet(), taps, taps, torch.randn(2, 3, 16, 16), 10)


def test_method_contract() -> None:
    check = check_method(kdhub.create("method", "ab", main_loss=True))
    assert check.loss > 0
