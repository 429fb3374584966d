"""SRRL: both terms against NumPy, zero-loss invariance, the frozen teacher classifier, the contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _digits_runs import digits_trainer, logged
from torch import nn

import kdhub
from kdhub.contract.functional import kl_per_sample
from kdhub.testing import TINY_TAPS, TinyNet, check_method


class _Teacher(nn.Module):
    def __init__(self, dim: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, classes)


def _setup(s_dim: int = 4, t_dim: int = 6, **options: object) -> tuple[kdhub.Method, _Teacher]:
    torch.manual_seed(0)
    teacher = _Teacher(t_dim).eval()
    taps = {"pooled": ["x"], "classifier": ["fc"]}
    ctx = kdhub.SetupContext(
        num_classes=3,
        num_train=8,
        epochs=1,
        steps_per_epoch=1,
        student=nn.Identity(),
        teacher=teacher,
        student_taps=taps,
        teacher_taps=taps,
        student_shapes={"pooled": [(s_dim,)]},
        teacher_shapes={"pooled": [(t_dim,)]},
        train_labels=torch.zeros(8, dtype=torch.long),
    )
    method = kdhub.create("method", "srrl", **options)
    method.setup(ctx)
    return method, teacher


def _out(h_s: torch.Tensor, h_t: torch.Tensor, z_t: torch.Tensor) -> kdhub.StepOutputs:
    n = len(h_s)
    return kdhub.StepOutputs(
        student_logits=torch.zeros(n, 3),
        teacher_logits=z_t,
        labels=torch.zeros(n, dtype=torch.long),
        indices=torch.arange(n),
        student_features={"pooled": [h_s]},
        teacher_features={"pooled": [h_t]},
    )


def test_terms_against_numpy() -> None:
    method, teacher = _setup(fm_weight=0.5, sr_weight=2.0)
    with torch.no_grad():
        method.bn.weight.uniform_(0.5, 1.5)
        method.bn.bias.uniform_(-0.2, 0.2)
    torch.manual_seed(1)
    h_s, h_t, z_t = torch.randn(5, 4), torch.rand(5, 6), torch.randn(5, 3)
    method.train()
    terms = method.loss(_out(h_s, h_t, z_t))
    # the connector by hand: 1x1 conv = W h, training-mode BN with the batch's biased variance, ReLU
    w = method.conv.weight.detach().double().numpy().reshape(6, 4)
    x = h_s.double().numpy() @ w.T
    x = (x - x.mean(0)) / np.sqrt(x.var(0) + method.bn.eps)
    h = np.maximum(x * method.bn.weight.detach().double().numpy() + method.bn.bias.detach().double().numpy(), 0)
    fm = ((h - h_t.double().numpy()) ** 2).mean(1)
    z = h @ teacher.fc.weight.detach().double().numpy().T + teacher.fc.bias.detach().double().numpy()
    sr = ((z - z_t.double().numpy()) ** 2).mean(1)
    np.testing.assert_allclose(terms["fm"].detach().numpy(), 0.5 * fm, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(terms["sr"].detach().numpy(), 2.0 * sr, rtol=1e-5, atol=1e-7)
    # their batch means are the reference code's two F.mse_loss terms
    h_t_ = torch.tensor(h, dtype=torch.float32)
    torch.testing.assert_close(terms["fm"].mean() / 0.5, nn.functional.mse_loss(h_t_, h_t))


def test_zero_loss_when_connected_student_is_the_teacher_feature() -> None:
    method, teacher = _setup(s_dim=6, t_dim=6)
    with torch.no_grad():  # identity connector: conv = I, BN (eval) mean 0, var 1 - eps
        method.conv.weight.copy_(torch.eye(6).view(6, 6, 1, 1))
        method.bn.running_var.fill_(1 - method.bn.eps)
    method.eval()
    h_t = torch.rand(4, 6)  # post-ReLU, so the connector's ReLU keeps it
    z_t = teacher.fc(h_t).detach()
    terms = method.loss(_out(h_t.clone(), h_t, z_t))
    assert terms["fm"].abs().max() < 1e-6
    assert terms["sr"].abs().max() < 1e-6
    terms = method.loss(_out(h_t + 0.1, h_t, z_t))
    torch.testing.assert_close(terms["fm"], torch.full((4,), 0.01))


def test_kl_variant_and_its_temperature() -> None:
    method, teacher = _setup(sr_loss="kl", temperature=4.0)
    torch.manual_seed(2)
    h_s, h_t, z_t = torch.randn(5, 4), torch.rand(5, 6), torch.randn(5, 3)
    method.train()
    terms = method.loss(_out(h_s, h_t, z_t))
    z = teacher.fc(method.connect(h_s))
    torch.testing.assert_close(terms["sr"], 16 * kl_per_sample(z, z_t, 4.0))
    with pytest.raises(kdhub.ConfigError, match="only with sr_loss: kl"):
        kdhub.create("method", "srrl", temperature=2.0)


def test_teacher_classifier_is_frozen_and_not_owned() -> None:
    teacher = TinyNet(10, width=16).eval()
    method = kdhub.create("method", "srrl")
    result = check_method(method, teacher=teacher)
    assert all(p.grad is None for p in teacher.parameters()), "the teacher's classifier is used detached"
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in method.parameters()}
    assert set(method.state_dict()) == {
        "conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked",
    }  # fmt: skip
    for name, p in method.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    assert set(result.terms) == {"fm", "sr"}
    # gradients reach the student through the teacher's classifier alone
    student = TinyNet(10, width=8)
    only_sr = kdhub.create("method", "srrl", fm_weight=0.0)
    check_method(only_sr, student=student, teacher=teacher)
    assert student.stage3.conv.weight.grad.abs().sum() > 0


def test_incompatible_teachers() -> None:
    no_head = {k: v for k, v in TINY_TAPS.items() if k != "classifier"}
    with pytest.raises(kdhub.IncompatibleError, match="classifier"):
        check_method(kdhub.create("method", "srrl"), teacher_taps=no_head)
    wrong = {**TINY_TAPS, "classifier": ["stage3"]}
    with pytest.raises(kdhub.IncompatibleError, match="does not take"):
        check_method(kdhub.create("method", "srrl"), teacher_taps=wrong)
    with pytest.raises(kdhub.IncompatibleError, match="no module"):
        check_method(kdhub.create("method", "srrl"), teacher_taps={**TINY_TAPS, "classifier": ["head"]})


def test_contract() -> None:
    check_method(kdhub.create("method", "srrl"))
    check_method(kdhub.create("method", "srrl", sr_loss="kl", temperature=2.0))
    assert kdhub.get_plugin("method", "srrl").feature_roles == ("pooled",)


@pytest.mark.skipif("resnet8x4" not in kdhub.list_plugins("model"), reason="needs the zoo's CIFAR ResNets")
def test_one_step_resnet32x4_to_resnet8x4() -> None:
    s_plugin, t_plugin = kdhub.create("model", "resnet8x4"), kdhub.create("model", "resnet32x4")
    student = s_plugin.build(num_classes=100, in_channels=3, image_size=32)
    teacher = t_plugin.build(num_classes=100, in_channels=3, image_size=32).eval()
    method = kdhub.create("method", "srrl")
    check_method(
        method, student, teacher, s_plugin.taps(student), t_plugin.taps(teacher), 100, batch_size=4, image_size=32
    )
    assert method.conv.in_channels == 256
    assert method.conv.out_channels == 256
    assert method._teacher_head[0] is teacher.fc


def test_real_run_on_digits_learns() -> None:
    trainer = digits_trainer([{"name": "srrl"}], epochs=3)
    result = trainer.fit()
    for term in ("fm", "sr"):
        losses = logged(trainer, f"loss/srrl.{term}")
        assert len(losses) == 3
        assert all(math.isfinite(v) for v in losses)
        assert losses[-1] < losses[0]
    assert result.last_acc > 50


@pytest.mark.slow
def test_real_run_under_a_class_selecting_policy() -> None:
    trainer = digits_trainer(
        [{"name": "srrl"}], epochs=2, policy={"name": "tllm", "options": {"start": 1, "window": 1}}
    )
    trainer.fit()
    assert all(math.isfinite(v) for v in logged(trainer, "loss/srrl.sr"))
