"""RKD: distance and angle terms against NumPy, invariances, option checks and the method contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdhub
from kdhub.testing import check_method
from kdhub_methods.rkd import rkd_angle, rkd_distance


def _huber(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.where(d < 1, 0.5 * d**2, d - 0.5).mean())


def _numpy_terms(e_s: np.ndarray, e_t: np.ndarray) -> tuple[float, float]:
    def dist(e: np.ndarray) -> np.ndarray:
        d = np.sqrt(((e[:, None] - e[None]) ** 2).sum(-1))
        n = len(e)
        return d / (d.sum() / (n * (n - 1)))

    def ang(e: np.ndarray) -> np.ndarray:
        v = e[None, :, :] - e[:, None, :]  # v[i, j] = e_j - e_i
        norm = np.linalg.norm(v, axis=2, keepdims=True)
        v = np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)
        return np.einsum("ijd,ikd->ijk", v, v).ravel()

    return _huber(dist(e_s), dist(e_t)), _huber(ang(e_s), ang(e_t))


def test_golden_against_numpy() -> None:
    rng = np.random.default_rng(0)
    e_s, e_t = rng.normal(size=(5, 3)), rng.normal(size=(5, 4)) * 3
    want_d, want_a = _numpy_terms(e_s, e_t)
    s, t = torch.tensor(e_s, dtype=torch.float32), torch.tensor(e_t, dtype=torch.float32)
    assert rkd_distance(s, t).item() == pytest.approx(want_d, rel=1e-5)
    assert rkd_angle(s, t).item() == pytest.approx(want_a, rel=1e-5)


def test_golden_by_hand_on_a_right_triangle() -> None:
    # student: right isosceles triangle (0,0), (1,0), (0,1); teacher: three collinear points 0, 1, 2.
    # Angle cosines at vertex 0: student <(1,0),(0,1)> = 0 vs teacher <+1,+1> = 1, etc.
    e_s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    e_t = torch.tensor([[0.0], [1.0], [2.0]])
    _, want_a = _numpy_terms(e_s.numpy(), e_t.numpy())
    assert rkd_angle(e_s, e_t).item() == pytest.approx(want_a, rel=1e-6)
    # distances: student [1, 1, sqrt 2] / mean, teacher [1, 2, 1] / (4/3)
    ds = np.array([1, 1, np.sqrt(2)]) / ((2 + np.sqrt(2)) / 3)
    dt = np.array([1, 2, 1]) / (4 / 3)
    want_d = 2 * _huber(ds, dt) * 3 / 9  # 6 off-diagonal entries of 9, each pair twice
    assert rkd_distance(e_s, e_t).item() == pytest.approx(want_d, rel=1e-6)


def test_invariant_to_similarity_transforms() -> None:
    torch.manual_seed(0)
    e = torch.randn(6, 5)
    q, _ = torch.linalg.qr(torch.randn(5, 5))
    moved = 3.0 * e @ q + torch.randn(1, 5)
    assert rkd_distance(moved, e).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_angle(moved, e).item() == pytest.approx(0.0, abs=1e-6)


def test_terms_are_weighted_and_logged_separately() -> None:
    method = kdhub.create("method", "rkd", distance_weight=2.0, angle_weight=0.0)
    check = check_method(method)
    assert set(check.terms) == {"distance"}
    full = check_method(kdhub.create("method", "rkd"))
    assert set(full.terms) == {"distance", "angle"}
    assert full.terms["distance"].item() == pytest.approx(12.5 * check.terms["distance"].item(), rel=1e-5)
    with pytest.raises(kdhub.ConfigError, match="both 0"):
        kdhub.create("method", "rkd", distance_weight=0.0, angle_weight=0.0)


def test_method_contract() -> None:
    method = kdhub.create("method", "rkd")
    assert method.per_sample is False
    assert check_method(method).loss > 0
