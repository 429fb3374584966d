"""DeiT hard-label distillation: golden values, teacher-scale invariance, contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kdhub
from kdhub.testing import check_method, test_batch


def test_golden_on_test_batch() -> None:
    # argmax z_t = [0, 0]; CE([1,2,3], 0) = log(e + e^2 + e^3) - 1 = 2.407606; CE([0,0,0], 0) = log 3
    loss = kdhub.create("method", "deit").loss(test_batch())
    expected = [math.log(math.e + math.e**2 + math.e**3) - 1, math.log(3)]
    assert loss.shape == (2,)
    assert loss.tolist() == pytest.approx(expected, abs=1e-6)
    assert expected[0] == pytest.approx(2.407606, abs=1e-6)


def test_label_smoothing_matches_torch_convention() -> None:
    out = test_batch()
    loss = kdhub.create("method", "deit", label_smoothing=0.1).loss(out)
    # q = 0.9 onehot(0) + 0.1 / 3: for row 1, 0.9 * 2.407606 + (0.1 / 3) * (2.407606 + 1.407606 + 0.407606)
    assert loss[0].item() == pytest.approx(0.9 * 2.407606 + 0.1 / 3 * (2.407606 + 1.407606 + 0.407606), abs=1e-5)
    reference = F.cross_entropy(out.student_logits, torch.tensor([0, 0]), reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(loss, reference)


def test_depends_on_the_teacher_only_through_its_top_class() -> None:
    out = test_batch()
    method = kdhub.create("method", "deit")
    scaled = kdhub.StepOutputs(
        student_logits=out.student_logits,
        teacher_logits=out.teacher_logits * 7 + 3,
        labels=out.labels,
        indices=out.indices,
    )
    torch.testing.assert_close(method.loss(out), method.loss(scaled))


def test_contract() -> None:
    method = kdhub.create("method", "deit")
    assert method.per_sample
    assert method.output_based
    assert method.default_weight == 0.5
    check_method(method)
