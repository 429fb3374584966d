"""FSP: golden FSP loss, channel checks, the initialisation stage and the method contract."""

from __future__ import annotations

import pytest
import torch

import kdhub
from kdhub.testing import TINY_TAPS, TinyNet, check_method, forward_outputs, init_losses, setup_method
from kdhub_methods.fsp import fsp_loss, fsp_matrix


def test_golden_by_hand() -> None:
    # bottom: 1 channel [1, 2]; top: channels [1, 0] and [1, 2] over 2 positions
    # G = [[(1*1 + 0*2)/2], [(1*1 + 2*2)/2]] = [[.5], [2.5]]; teacher G = 0 -> mean(.25, 6.25) = 3.25
    bottom = torch.tensor([[1.0, 2.0]]).view(1, 1, 1, 2)
    top = torch.tensor([[1.0, 0.0], [1.0, 2.0]]).view(1, 2, 1, 2)
    torch.testing.assert_close(fsp_matrix(bottom, top), torch.tensor([[[0.5], [2.5]]]))
    zeros = [torch.zeros_like(bottom), torch.zeros_like(top)]
    torch.testing.assert_close(fsp_loss([bottom, top], zeros), torch.tensor([3.25]))
    torch.testing.assert_close(fsp_loss([bottom, top], [bottom, top]), torch.tensor([0.0]))


def test_pairs_of_different_size_are_pooled() -> None:
    torch.manual_seed(0)
    bottom, top = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 4, 4)
    torch.testing.assert_close(fsp_matrix(bottom, top), fsp_matrix(torch.nn.functional.avg_pool2d(bottom, 2), top))


def _tiny(teacher_width: int = 8, **options: object) -> tuple[kdhub.Method, TinyNet, TinyNet, torch.Tensor]:
    torch.manual_seed(0)
    method = kdhub.create("method", "fsp", **options)
    student, teacher = TinyNet(width=8), TinyNet(width=teacher_width).eval()
    images = torch.randn(8, 3, 16, 16)
    setup_method(method, student, teacher, TINY_TAPS, TINY_TAPS, images, 10)
    return method, student, teacher, images


def test_unequal_channels_are_incompatible() -> None:
    with pytest.raises(
        kdhub.IncompatibleError, match="feature 0 of the chain stem \\+ stages has 8 \\(student\\) vs 16"
    ):
        _tiny(teacher_width=16)


def test_include_stem_chooses_the_roles() -> None:
    assert kdhub.create("method", "fsp").feature_roles == ("stem", "stages")
    assert kdhub.create("method", "fsp", include_stem=False).feature_roles == ("stages",)
    taps = {k: v for k, v in TINY_TAPS.items() if k != "stem"}
    method = kdhub.create("method", "fsp", include_stem=False, main_loss=True)
    check = check_method(method, teacher=TinyNet(width=8).eval(), student_taps=taps, teacher_taps=taps)
    assert check.loss > 0


def test_init_loss_decreases_on_tinynet() -> None:
    method, student, teacher, images = _tiny()
    assert method.init_epochs == 30
    labels = torch.arange(8) % 10
    torch.testing.assert_close(
        method.loss(forward_outputs(method, student, teacher, TINY_TAPS, TINY_TAPS, images, labels)), torch.zeros(8)
    )
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    losses = init_losses(method, student, teacher, images, labels, optimizer)
    assert losses[-1] < 0.5 * losses[0], losses


def test_method_contract() -> None:
    check = check_method(kdhub.create("method", "fsp", main_loss=True), teacher=TinyNet(width=8).eval())
    assert check.loss > 0
