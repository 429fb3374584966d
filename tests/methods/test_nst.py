"""NST: golden MMD against NumPy, invariances, per-sample shape and the method contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdhub
from kdhub.testing import check_method
from kdhub_methods.nst import nst_loss


def _numpy_nst(f_s: np.ndarray, f_t: np.ndarray, degree: int = 2, offset: float = 0.0) -> np.ndarray:
    out = []
    for s, t in zip(f_s, f_t, strict=True):
        s = s.reshape(len(s), -1)
        t = t.reshape(len(t), -1)
        s = s / np.linalg.norm(s, axis=1, keepdims=True)
        t = t / np.linalg.norm(t, axis=1, keepdims=True)

        def k(a: np.ndarray, b: np.ndarray) -> float:
            return float(((a @ b.T + offset) ** degree).mean())

        out.append(k(t, t) + k(s, s) - 2 * k(s, t))
    return np.array(out)


def test_golden_by_hand() -> None:
    # student channels (1, 0), (0, 1); teacher channel (1, 1)/sqrt 2 over 2 positions, kernel (x.y)^2:
    # k(s, s) mean = (1 + 0 + 0 + 1)/4 = .5; k(t, t) = 1; k(s, t) = (.5 + .5)/2 = .5 -> .5 + 1 - 1 = .5
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    f_t = torch.tensor([[3.0, 3.0]]).view(1, 1, 1, 2)
    torch.testing.assert_close(nst_loss(f_s, f_t), torch.tensor([0.5]))


@pytest.mark.parametrize(("degree", "offset"), [(2, 0.0), (3, 0.5), (1, 0.0)])
def test_matches_numpy(degree: int, offset: float) -> None:
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(3, 4, 3, 3)), rng.normal(size=(3, 6, 3, 3))
    got = nst_loss(torch.tensor(f_s, dtype=torch.float32), torch.tensor(f_t, dtype=torch.float32), degree, offset)
    np.testing.assert_allclose(got.numpy(), _numpy_nst(f_s, f_t, degree, offset), rtol=1e-4, atol=1e-6)


def test_invariances() -> None:
    torch.manual_seed(0)
    f = torch.randn(3, 8, 4, 4)
    torch.testing.assert_close(nst_loss(f, f), torch.zeros(3), atol=1e-6, rtol=0)
    # MMD compares sets of channels: permuting or rescaling the student's channels changes nothing
    g = torch.randn(3, 5, 4, 4)
    scale = torch.rand(1, 8, 1, 1) + 0.5
    torch.testing.assert_close(nst_loss(f[:, torch.randperm(8)] * scale, g), nst_loss(f, g))


def test_is_per_sample() -> None:
    torch.manual_seed(0)
    f_s, f_t = torch.randn(4, 3, 4, 4), torch.randn(4, 5, 4, 4)
    full = nst_loss(f_s, f_t)
    torch.testing.assert_close(nst_loss(f_s[1:3], f_t[1:3]), full[1:3])


def test_method_contract() -> None:
    method = kdhub.create("method", "nst")
    assert method.per_sample is True
    assert check_method(method).loss > 0
