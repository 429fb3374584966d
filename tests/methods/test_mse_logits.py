"""mse_logits: the annealing golden value of docs/reference-values.md, TB by hand, contract."""

from __future__ import annotations

import pytest
import torch

import kdhub
from kdhub.testing import check_method, test_batch


def test_golden_annealing_example() -> None:
    # z_s = 0, z_t = Phi * [2, -1, 0] with Phi = 0.1: mean(0.2^2, 0.1^2, 0) = 0.05 / 3 = 0.016667
    z_t = 0.1 * torch.tensor([[2.0, -1.0, 0.0]])
    out = kdhub.StepOutputs(
        student_logits=torch.zeros(1, 3), teacher_logits=z_t, labels=torch.tensor([0]), indices=torch.tensor([0])
    )
    loss = kdhub.create("method", "mse_logits").loss(out)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(0.016667, abs=1e-6)


def test_test_batch_by_hand() -> None:
    # row 1: diffs [-2, 0, 2] -> 8 / 3; row 2: diffs [-1, 0, 1] -> 2 / 3
    loss = kdhub.create("method", "mse_logits").loss(test_batch())
    assert loss.tolist() == pytest.approx([8 / 3, 2 / 3], abs=1e-6)


def test_zero_when_student_equals_teacher() -> None:
    z = torch.randn(4, 7)
    out = kdhub.StepOutputs(student_logits=z, teacher_logits=z.clone(), labels=torch.arange(4), indices=torch.arange(4))
    assert kdhub.create("method", "mse_logits").loss(out).abs().max() == 0


def test_contract() -> None:
    method = kdhub.create("method", "mse_logits")
    assert method.per_sample
    assert method.output_based
    check_method(method)
