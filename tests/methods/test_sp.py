"""SP: golden similarity loss, invariances, batch-relational declaration and the method contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kdhub
from kdhub.testing import check_method
from kdhub_methods.sp import sp_loss


def _numpy_sp(f_s: np.ndarray, f_t: np.ndarray) -> float:
    def gram(f: np.ndarray) -> np.ndarray:
        q = f.reshape(len(f), -1)
        g = q @ q.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    return float(((gram(f_t) - gram(f_s)) ** 2).sum() / len(f_s) ** 2)


def test_golden_by_hand() -> None:
    # G_s = I (orthogonal samples); G_t = all ones, rows normalised to 1/sqrt(2)
    # ||G_t - G_s||^2 = 2 (1 - 1/sqrt(2))^2 + 2 (1/sqrt(2))^2, divided by b^2 = 4
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    want = (2 * (1 - 1 / math.sqrt(2)) ** 2 + 1.0) / 4
    assert sp_loss(f_s, f_t).item() == pytest.approx(want, abs=1e-6)
    assert want == pytest.approx(0.292893, abs=1e-6)


def test_matches_numpy_on_maps_of_different_shapes() -> None:
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(5, 4, 3, 3)), rng.normal(size=(5, 8, 2, 2))
    got = sp_loss(torch.tensor(f_s, dtype=torch.float32), torch.tensor(f_t, dtype=torch.float32))
    assert got.shape == ()
    assert got.item() == pytest.approx(_numpy_sp(f_s, f_t), rel=1e-5)


def test_invariances() -> None:
    torch.manual_seed(0)
    f = torch.randn(6, 10)
    q, _ = torch.linalg.qr(torch.randn(10, 10))
    # G = F F^T is unchanged by an orthogonal map of the features; rows are normalised against scale
    assert sp_loss(2.5 * f @ q, f).item() == pytest.approx(0.0, abs=1e-6)


def test_is_batch_relational() -> None:
    assert kdhub.get_plugin("method", "sp").per_sample is False


def test_method_contract() -> None:
    check = check_method(kdhub.create("method", "sp"))
    assert check.loss.shape == ()
    assert check.loss > 0
