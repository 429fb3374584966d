"""DIST: golden values against a NumPy transcription of the official loss, invariances, contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdhub
from kdhub.testing import check_method, test_batch


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)


def _numpy_dist(z_s: np.ndarray, z_t: np.ndarray, t: float) -> tuple[float, float]:
    y_s, y_t = _softmax(z_s / t), _softmax(z_t / t)
    inter = t * t * (1 - _pearson(y_s, y_t)).mean()
    intra = t * t * (1 - _pearson(y_s.T, y_t.T)).mean()
    return float(inter), float(intra)


Z_S = np.array([[1.0, 2.0, 3.0, 0.5], [0.0, 1.0, -1.0, 2.0], [2.0, -1.0, 0.5, 0.0]])
Z_T = np.array([[3.0, 2.0, 1.0, 0.0], [0.5, 1.5, -2.0, 1.0], [1.0, 0.0, 2.0, -1.0]])


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_golden_against_numpy(temperature: float) -> None:
    out = kdhub.StepOutputs(
        student_logits=torch.tensor(Z_S, dtype=torch.float32),
        teacher_logits=torch.tensor(Z_T),
        labels=torch.tensor([0, 1, 2]),
        indices=torch.arange(3),
    )
    terms = kdhub.create("method", "dist", beta=2.0, gamma=3.0, temperature=temperature).loss(out)
    inter, intra = _numpy_dist(Z_S, Z_T, temperature)
    assert terms["inter"].shape == terms["intra"].shape == ()
    assert terms["inter"].item() == pytest.approx(2.0 * inter, rel=1e-5)
    assert terms["intra"].item() == pytest.approx(3.0 * intra, rel=1e-5)


def test_inter_on_test_batch_by_hand() -> None:
    # T = 1. Row 1: p_s = softmax([1,2,3]) = [.0900, .2447, .6652], p_t is its reverse; centred,
    # rho = (2 (-.24330)(.33191) + (-.08860)^2) / (.24330^2 + .08860^2 + .33191^2) = -0.867093.
    # Row 2: the student is uniform, so its centred row is 0 and rho = 0 (the official eps).
    # inter = ((1 + 0.867093) + 1) / 2 = 1.433546. The two teacher rows are one distribution
    # (z_t rows differ by a shift), so every intra-class correlation is 0 and intra = 1.
    terms = kdhub.create("method", "dist").loss(test_batch())
    assert terms["inter"].item() == pytest.approx(1.433546, abs=1e-5)
    assert terms["intra"].item() == pytest.approx(1.0, abs=1e-6)


def test_zero_when_student_equals_teacher() -> None:
    z = torch.tensor(Z_T, dtype=torch.float32)
    terms = kdhub.create("method", "dist").loss(
        kdhub.StepOutputs(student_logits=z, teacher_logits=z.clone(), labels=torch.arange(3), indices=torch.arange(3))
    )
    assert terms["inter"].abs() < 1e-6
    assert terms["intra"].abs() < 1e-6


def test_constant_outputs_have_finite_gradient() -> None:
    z_s = torch.zeros(4, 5, requires_grad=True)  # every row and column centred to 0
    out = kdhub.StepOutputs(
        student_logits=z_s, teacher_logits=torch.randn(4, 5), labels=torch.arange(4), indices=torch.arange(4)
    )
    terms = kdhub.create("method", "dist").loss(out)
    (terms["inter"] + terms["intra"]).backward()
    assert torch.isfinite(z_s.grad).all()


def test_contract_batch_relational() -> None:
    method = kdhub.create("method", "dist")
    assert not method.per_sample
    assert method.output_based
    result = check_method(method)
    assert set(result.terms) == {"inter", "intra"}
