"""Each output-based method of this library trains one step on the resnet32x4 -> resnet8x4 pair."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kdhub
from kdhub.testing import check_method

METHODS = ["dkd", "dist", "deit", "label_smoothing", "mse_logits", "logit_std"]
PAIR = ("resnet32x4", "resnet8x4")


def _build(name: str) -> tuple[nn.Module, dict[str, list[str]]]:
    model = kdhub.create("model", name)
    net = model.build(num_classes=100, in_channels=3, image_size=32)
    return net, model.taps(net)


@pytest.fixture(scope="module")
def teacher() -> tuple[nn.Module, dict[str, list[str]]]:
    missing = [name for name in PAIR if name not in kdhub.list_plugins("model")]
    if missing:
        pytest.skip(f"model zoo lacks {', '.join(missing)} (registered: {kdhub.list_plugins('model')})")
    torch.manual_seed(0)
    net, taps = _build(PAIR[0])
    return net.eval(), taps


@pytest.mark.parametrize("name", METHODS)
def test_one_training_step(name: str, teacher: tuple[nn.Module, dict[str, list[str]]]) -> None:
    teacher_net, t_taps = teacher
    torch.manual_seed(1)
    student, s_taps = _build(PAIR[1])  # fresh per method: a step of one method must not bias the next
    method = kdhub.create("method", name)
    before = [p.detach().clone() for p in student.parameters()]
    optim = torch.optim.SGD(student.parameters(), lr=0.05)
    optim.zero_grad()
    result = check_method(
        method,
        student=student,
        teacher=teacher_net if method.needs_teacher else None,
        student_taps=s_taps,
        teacher_taps=t_taps,
        num_classes=100,
        batch_size=4,
        image_size=32,
        epoch=30,
    )
    assert torch.isfinite(result.loss)
    assert result.loss > 0
    assert result.outputs.student_logits.shape == (4, 100)
    if not method.needs_teacher:
        # check_method's gradient assertion covers teacher-based methods only
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads
        assert any(g.abs().sum() > 0 for g in grads)
    optim.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, student.parameters(), strict=True))
