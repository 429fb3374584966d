"""PKT: golden loss against NumPy and by hand, invariances and the method contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdhub
from kdhub.testing import check_method
from kdhub_methods.pkt import pkt_loss


def _numpy_pkt(e_s: np.ndarray, e_t: np.ndarray, eps: float = 1e-7) -> float:
    def probs(e: np.ndarray) -> np.ndarray:
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + eps)
        k = (e @ e.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    p_s, p_t = probs(e_s), probs(e_t)
    return float((p_t * np.log((p_t + eps) / (p_s + eps))).mean())


def test_golden_by_hand() -> None:
    # student: two orthogonal samples -> K = [[1, .5], [.5, 1]] -> P = [[2/3, 1/3], [1/3, 2/3]];
    # teacher: two equal samples -> P = 1/2 everywhere.
    # loss = mean_ij P^t log(P^t / P^s) = (1/4) * 2 * (.5 ln(.5/(2/3)) + .5 ln(.5/(1/3))) = 0.0294458
    e_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e_t = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    want = 0.25 * (np.log(0.75) + np.log(1.5))
    assert want == pytest.approx(0.0294458, abs=1e-7)
    assert pkt_loss(e_s, e_t).item() == pytest.approx(want, abs=1e-6)


def test_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    e_s, e_t = rng.normal(size=(6, 4)), rng.normal(size=(6, 7))
    got = pkt_loss(torch.tensor(e_s, dtype=torch.float32), torch.tensor(e_t, dtype=torch.float32))
    assert got.item() == pytest.approx(_numpy_pkt(e_s, e_t), rel=1e-4)


def test_invariances() -> None:
    torch.manual_seed(0)
    e = torch.randn(5, 8)
    assert pkt_loss(e, e).item() == pytest.approx(0.0, abs=1e-7)
    # a positive scale per sample does not change cosine similarities
    assert pkt_loss(e * torch.rand(5, 1).add(0.5), e).item() == pytest.approx(0.0, abs=1e-6)


def test_method_contract() -> None:
    method = kdhub.create("method", "pkt")
    assert method.per_sample is False
    check = check_method(method)
    assert check.loss.shape == ()
    assert check.loss > 0
