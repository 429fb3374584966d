"""FT: golden factor loss of both forms, the paraphraser's initialisation stage and the method contract."""

from __future__ import annotations

import math

import pytest
import torch

import kdhub
from kdhub.testing import TINY_TAPS, TinyNet, check_method, forward_outputs, init_losses, setup_method
from kdhub_methods.ft import ft_loss


def test_golden_repdistiller_form() -> None:
    # mean_c f^2: student [1, 2] -> [1, 2]/sqrt 5, teacher [2, 1] -> [2, 1]/sqrt 5; mean |diff| = 1/sqrt 5
    f_s = torch.tensor([[1.0, 0.0], [1.0, 2.0]]).view(1, 2, 1, 2)
    f_t = torch.tensor([[2.0, 1.0]]).sqrt().view(1, 1, 1, 2)
    torch.testing.assert_close(ft_loss(f_s, f_t, "repdistiller"), torch.tensor([1 / math.sqrt(5)]))


def test_golden_paper_form() -> None:
    # whole factors: (3, 4)/5 vs (1, 0): mean |(.6 - 1, .8 - 0)| = (.4 + .8)/2 = .6
    f_s = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    f_t = torch.tensor([2.0, 0.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(ft_loss(f_s, f_t, "paper"), torch.tensor([0.6]))
    torch.testing.assert_close(ft_loss(f_s, 7 * f_s, "paper"), torch.tensor([0.0]))


def _tiny(**options: object) -> tuple[kdhub.Method, TinyNet, TinyNet, torch.Tensor]:
    torch.manual_seed(0)
    method = kdhub.create("method", "ft", **options)
    student, teacher = TinyNet(width=8), TinyNet(width=16).eval()
    images = torch.randn(8, 3, 16, 16)
    setup_method(method, student, teacher, TINY_TAPS, TINY_TAPS, images, 10)
    return method, student, teacher, images


def test_modules_sized_from_the_last_stage() -> None:
    method, *_ = _tiny(rate=0.25)
    # TinyNet last stage: student 32 channels, teacher 64; factor = int(0.25 * 64) = 16
    assert method.paraphraser.encoder[0][0].in_channels == 64
    assert method.paraphraser.encoder[-1][0].out_channels == 16
    assert method.translator.convs[0].in_channels == 32
    assert method.translator.convs[-1].out_channels == 16
    assert method.init_epochs == 30


def test_init_loss_trains_the_paraphraser_only_and_decreases() -> None:
    method, student, teacher, images = _tiny()
    labels = torch.arange(8) % 10
    optimizer = torch.optim.Adam(list(student.parameters()) + list(method.parameters()), lr=1e-3)
    losses = init_losses(method, student, teacher, images, labels, optimizer)
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(p.grad is None for p in student.parameters())
    assert all(p.grad is None for p in method.translator.parameters())


def test_main_loss_leaves_the_paraphraser_frozen() -> None:
    method, student, teacher, images = _tiny()
    out = forward_outputs(method, student, teacher, TINY_TAPS, TINY_TAPS, images, torch.arange(8) % 10)
    method.loss(out).mean().backward()
    assert all(p.grad is None for p in method.paraphraser.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.translator.parameters())


@pytest.mark.parametrize("form", ["repdistiller", "paper"])
def test_method_contract(form: str) -> None:
    check = check_method(kdhub.create("method", "ft", form=form))
    assert check.loss > 0
