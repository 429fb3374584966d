"""OFD: teacher margins, partial L2, zero-loss invariance, stage weights, teacher handling, the contract."""

from __future__ import annotations

import math

import pytest
import torch
from _digits_runs import digits_trainer, logged
from scipy.stats import norm
from torch import nn

import kdhub
from kdhub.testing import TINY_TAPS, TinyNet, check_method
from kdhub_methods.ofd import bn_margin, partial_l2


def _reference_margin(gamma: float, beta: float) -> float:
    """mdistiller's loop, scalar by scalar with SciPy."""
    s, m = abs(gamma), beta
    if norm.cdf(-m / s) > 0.001:
        return -s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / norm.cdf(-m / s) + m
    return -3 * s


def test_margin_golden_values() -> None:
    gamma = torch.tensor([1.0, -2.0, 1.0, 0.5, 3.0])
    beta = torch.tensor([0.0, 1.0, 5.0, -0.3, 2.0])
    margin = bn_margin(gamma, beta)
    # N(0, 1): E[x | x < 0] = -sqrt(2 / pi) = -0.797885; gamma 1, beta 5: Phi(-5) = 2.9e-7 <= 0.001 -> -3
    assert margin[0].item() == pytest.approx(-math.sqrt(2 / math.pi), abs=1e-6)
    assert margin[2].item() == pytest.approx(-3.0)
    for g, b, m in zip(gamma.tolist(), beta.tolist(), margin.tolist(), strict=True):
        assert m == pytest.approx(_reference_margin(g, b), abs=1e-6)
    assert torch.isfinite(bn_margin(torch.tensor([0.0, 0.0]), torch.tensor([0.0, -1.0]))).all()  # dead channels


def test_partial_l2_hand_example() -> None:
    # margin -1; target = max(t, -1); cost (s - target)^2 unless s <= target <= 0
    t = torch.tensor([2.0, -0.5, -0.5, -3.0, -3.0]).view(1, 5, 1, 1)
    s = torch.tensor([1.0, -0.7, 0.0, -2.0, -0.5]).view(1, 5, 1, 1)
    # (1 - 2)^2 = 1; s below t <= 0: 0; (0 + .5)^2 = .25; s below the margin: 0; (-.5 + 1)^2 = .25 -> 1.5
    assert partial_l2(s, t, torch.full((5,), -1.0)).tolist() == [1.5]


def test_partial_l2_matches_mdistiller() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    margin = torch.tensor([-0.8, -0.3, -1.5])
    m = margin.view(1, -1, 1, 1)
    ref = (
        (s - m) ** 2 * ((s > m) & (t <= m)).float()
        + (s - t) ** 2 * ((s > t) & (t > m) & (t <= 0)).float()
        + (s - t) ** 2 * (t > 0).float()
    )
    ours = partial_l2(s, t, margin)
    assert ours.shape == (4,)
    torch.testing.assert_close(ours.mean(), ref.abs().mean(dim=0).sum())  # mdistiller's feat_loss


class _Teacher(nn.Module):
    """Just the BatchNorms OFD reads (two stages of 4 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(4)
        self.bn1 = nn.BatchNorm2d(4)
        with torch.no_grad():
            self.bn0.weight.copy_(torch.tensor([1.0, 2.0, 0.5, 1.0]))
            self.bn0.bias.copy_(torch.tensor([0.0, 1.0, -0.5, 5.0]))
            self.bn1.weight.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0]))
            self.bn1.bias.copy_(torch.tensor([0.3, -0.2, 0.0, 1.0]))


def _setup_identity_ofd() -> tuple[kdhub.Method, _Teacher]:
    teacher = _Teacher().eval()
    taps = {"preact_stages": ["a", "b"], "bn_before_relu": ["bn0", "bn1"]}
    ctx = kdhub.SetupContext(
        num_classes=3,
        num_train=8,
        epochs=1,
        steps_per_epoch=1,
        student=nn.Identity(),
        teacher=teacher,
        student_taps=taps,
        teacher_taps=taps,
        student_shapes={"preact_stages": [(4, 6, 6), (4, 3, 3)]},
        teacher_shapes={"preact_stages": [(4, 6, 6), (4, 3, 3)]},
        train_labels=torch.zeros(8, dtype=torch.long),
    )
    ofd = kdhub.create("method", "ofd")
    ofd.setup(ctx)
    with torch.no_grad():  # connectors become the identity: 1x1 conv = I, BN (eval) with mean 0, var 1 - eps
        for connector in ofd.connectors:
            connector.conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            connector.bn.running_var.fill_(1 - connector.bn.eps)
    ofd.eval()
    return ofd, teacher


def test_zero_loss_when_student_matches_teacher_above_margin_and_stays_below_it() -> None:
    ofd, _teacher = _setup_identity_ofd()
    torch.manual_seed(3)
    feats_t = [torch.randn(2, 4, 6, 6) * 2, torch.randn(2, 4, 3, 3) * 2]
    feats_s = []
    for t, margin in zip(feats_t, ofd.margins(), strict=True):
        target = torch.maximum(t, margin.view(1, -1, 1, 1))
        # equal where the teacher is positive; anywhere at or below the target where it is not
        feats_s.append(torch.where(target > 0, t, target - torch.rand_like(t)))
    logits = torch.zeros(2, 3)

    def loss(fs: list[torch.Tensor]) -> torch.Tensor:
        out = kdhub.StepOutputs(
            student_logits=logits, teacher_logits=logits, labels=torch.tensor([0, 1]), indices=torch.tensor([0, 1]),
            student_features={"preact_stages": fs}, teacher_features={"preact_stages": feats_t},
        )  # fmt: skip
        return ofd.loss(out)

    assert loss(feats_s).tolist() == [0.0, 0.0]
    # one student position 0.5 above a positive teacher value costs 0.25, halved on the first of two stages
    t0 = feats_t[0]
    pos = (t0[0] > 0).nonzero()[0]
    bumped = feats_s[0].clone()
    bumped[(0, *pos.tolist())] += 0.5
    torch.testing.assert_close(loss([bumped, feats_s[1]]), torch.tensor([0.125, 0.0]))
    bumped = feats_s[1].clone()
    pos = (feats_t[1][1] > 0).nonzero()[0]
    bumped[(1, *pos.tolist())] += 0.5
    torch.testing.assert_close(loss([feats_s[0], bumped]), torch.tensor([0.0, 0.25]))


def test_margins_come_from_the_teachers_bn_before_relu() -> None:
    ofd, teacher = _setup_identity_ofd()
    torch.testing.assert_close(ofd.margins()[0], bn_margin(teacher.bn0.weight, teacher.bn0.bias))
    torch.testing.assert_close(ofd.margins()[1], bn_margin(teacher.bn1.weight, teacher.bn1.bias))
    assert {"margin0", "margin1"} <= set(ofd.state_dict())  # in checkpoints


def test_teacher_is_read_not_owned() -> None:
    teacher = TinyNet(10, width=16).eval()
    ofd = kdhub.create("method", "ofd")
    check_method(ofd, teacher=teacher)
    assert not teacher.training, "the teacher keeps the engine's eval mode"
    teacher_params = {id(p) for p in teacher.parameters()}
    assert not teacher_params & {id(p) for p in ofd.parameters()}
    ofd.train()
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())


def test_contract_and_trainable_parts() -> None:
    for kernel_size in (1, 3):
        ofd = kdhub.create("method", "ofd", kernel_size=kernel_size)
        check_method(ofd)
        assert len(ofd.connectors) == 3
        for connector in ofd.connectors:
            assert connector.conv.kernel_size == (kernel_size, kernel_size)
            for p in connector.parameters():
                assert p.grad is not None
                assert p.grad.abs().sum() > 0


def test_needs_preact_features_and_teacher_bns() -> None:
    no_bn = {k: v for k, v in TINY_TAPS.items() if k != "bn_before_relu"}
    with pytest.raises(kdhub.IncompatibleError, match="bn_before_relu"):
        check_method(kdhub.create("method", "ofd"), teacher_taps=no_bn)
    no_preact = {k: v for k, v in TINY_TAPS.items() if k != "preact_stages"}
    with pytest.raises(kdhub.IncompatibleError, match="preact_stages"):
        check_method(kdhub.create("method", "ofd"), student_taps=no_preact)
    wrong = {**TINY_TAPS, "bn_before_relu": ["stage2.bn", "stage3.bn"]}
    with pytest.raises(kdhub.IncompatibleError, match="pair one to one"):
        check_method(kdhub.create("method", "ofd"), teacher_taps=wrong)
    not_bn = {**TINY_TAPS, "bn_before_relu": ["stage1.conv", "stage2.conv", "stage3.conv"]}
    with pytest.raises(kdhub.IncompatibleError, match="not an affine BatchNorm"):
        check_method(kdhub.create("method", "ofd"), teacher_taps=not_bn)
    assert kdhub.get_plugin("method", "ofd").feature_roles == ("preact_stages",)


def test_stage_counts_differ_pairs_the_last_ones() -> None:
    student_taps = {**TINY_TAPS, "preact_stages": ["stage2.relu:input", "stage3.relu:input"]}
    ofd = kdhub.create("method", "ofd")
    teacher = TinyNet(10, width=16).eval()
    check_method(ofd, teacher=teacher, student_taps=student_taps)
    assert ofd.num_stages == 2
    torch.testing.assert_close(ofd.margins()[0], bn_margin(teacher.stage2.bn.weight, teacher.stage2.bn.bias))
    assert ofd.connectors[0].conv.in_channels == 16
    assert ofd.connectors[0].conv.out_channels == 32


@pytest.mark.skipif("resnet8x4" not in kdhub.list_plugins("model"), reason="needs the zoo's CIFAR ResNets")
def test_one_step_resnet32x4_to_resnet8x4() -> None:
    s_plugin, t_plugin = kdhub.create("model", "resnet8x4"), kdhub.create("model", "resnet32x4")
    student = s_plugin.build(num_classes=100, in_channels=3, image_size=32)
    teacher = t_plugin.build(num_classes=100, in_channels=3, image_size=32).eval()
    ofd = kdhub.create("method", "ofd")
    check_method(
        ofd, student, teacher, s_plugin.taps(student), t_plugin.taps(teacher), 100, batch_size=4, image_size=32
    )
    assert [c.conv.out_channels for c in ofd.connectors] == [64, 128, 256]
    bn = dict(teacher.named_modules())["layer3.4.bn2"]
    torch.testing.assert_close(ofd.margins()[2], bn_margin(bn.weight, bn.bias))


def test_real_run_on_digits_learns() -> None:
    trainer = digits_trainer([{"name": "ofd"}], epochs=3)  # weight 0.001 (the recipe's)
    result = trainer.fit()
    losses = logged(trainer, "loss/ofd")
    assert len(losses) == 3
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert result.last_acc > 50
