"""logit_std: a NumPy hand value on TB, affine invariance, stability and the contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdhub
from kdhub.testing import check_method, test_batch


def _numpy_logit_std(z_s: np.ndarray, z_t: np.ndarray, t: float) -> np.ndarray:
    """The official code in NumPy: z-score with the Bessel-corrected std + 1e-7, then KD at T."""

    def zscore(z: np.ndarray) -> np.ndarray:
        return (z - z.mean(1, keepdims=True)) / (z.std(1, ddof=1, keepdims=True) + 1e-7)

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p_t, p_s = softmax(zscore(z_t) / t), softmax(zscore(z_s) / t)
    return t * t * (p_t * np.log(p_t / p_s)).sum(1)


def test_golden_on_test_batch() -> None:
    # Row 2 of the student is constant: its z-score is 0, a uniform distribution. NumPy gives
    # [1.280626, 0.313684] at T = 2.
    out = test_batch()
    loss = kdhub.create("method", "logit_std").loss(out)
    reference = _numpy_logit_std(out.student_logits.numpy(), out.teacher_logits.numpy(), 2.0)
    assert reference.tolist() == pytest.approx([1.280626, 0.313684], abs=1e-6)
    assert loss.tolist() == pytest.approx(reference.tolist(), abs=1e-5)


def test_invariant_to_shift_and_positive_scale() -> None:
    torch.manual_seed(0)
    z_s, z_t = torch.randn(5, 10), torch.randn(5, 10) * 4
    labels = torch.arange(5)
    method = kdhub.create("method", "logit_std")
    base = method.loss(kdhub.StepOutputs(student_logits=z_s, teacher_logits=z_t, labels=labels, indices=labels))
    moved = method.loss(
        kdhub.StepOutputs(
            student_logits=3.5 * z_s - 2.0, teacher_logits=0.25 * z_t + 7.0, labels=labels, indices=labels
        )
    )
    torch.testing.assert_close(moved, base, rtol=1e-5, atol=1e-5)
    assert base.min() > 0.01  # not trivially zero
    # an affine copy of the teacher is a perfect student
    copy = method.loss(
        kdhub.StepOutputs(student_logits=2.0 * z_t + 1.0, teacher_logits=z_t, labels=labels, indices=labels)
    )
    assert copy.abs().max() < 1e-5


def test_plain_kd_is_not_invariant() -> None:
    out = test_batch()
    kd = kdhub.create("method", "kd", temperature=2.0)
    scaled = kdhub.StepOutputs(
        student_logits=out.student_logits * 3, teacher_logits=out.teacher_logits, labels=out.labels, indices=out.indices
    )
    assert not torch.allclose(kd.loss(out), kd.loss(scaled))


def test_constant_student_has_finite_gradient() -> None:
    z_s = torch.zeros(2, 4, requires_grad=True)
    out = kdhub.StepOutputs(
        student_logits=z_s, teacher_logits=torch.randn(2, 4), labels=torch.arange(2), indices=torch.arange(2)
    )
    kdhub.create("method", "logit_std").loss(out).sum().backward()
    assert torch.isfinite(z_s.grad).all()


def test_contract() -> None:
    method = kdhub.create("method", "logit_std")
    assert method.per_sample
    assert method.output_based
    assert method.default_weight == 9.0
    check_method(method)
