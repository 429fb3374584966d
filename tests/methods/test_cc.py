"""CC: golden values of both forms, option validation, embeddings and the method contract."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest
import torch

import kdhub
from kdhub.testing import check_method
from kdhub_methods.cc import cc_loss_gaussian, cc_loss_repdistiller


def test_repdistiller_form_golden_by_hand() -> None:
    # d = |e_s - e_t| = e_s; consecutive products: [1,2].[0,1] = 2, [0,1].[2,2] = 2 -> mean 2
    e_s = torch.tensor([[1.0, 2.0], [0.0, 1.0], [2.0, 2.0]])
    assert cc_loss_repdistiller(e_s, torch.zeros(3, 2)).item() == pytest.approx(2.0)
    assert cc_loss_repdistiller(e_s, e_s).item() == 0.0


def _numpy_gaussian_cc(e_s: np.ndarray, e_t: np.ndarray, gamma: float, order: int) -> float:
    def corr(e: np.ndarray) -> np.ndarray:
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        s = e @ e.T
        return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * s**p for p in range(order + 1))

    return float(((corr(e_t) - corr(e_s)) ** 2).mean())


def test_gaussian_form_matches_numpy_and_the_kernel() -> None:
    rng = np.random.default_rng(0)
    e_s, e_t = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    got = cc_loss_gaussian(torch.tensor(e_s, dtype=torch.float32), torch.tensor(e_t, dtype=torch.float32), 0.4, 2)
    assert got.item() == pytest.approx(_numpy_gaussian_cc(e_s, e_t, 0.4, 2), rel=1e-5)
    # a long expansion is the Gaussian kernel exp(-gamma ||x - y||^2) of the normalised embeddings
    u = e_s / np.linalg.norm(e_s, axis=1, keepdims=True)
    exact = np.exp(-0.4 * ((u[:, None] - u[None]) ** 2).sum(-1))
    from kdhub_methods.cc import gaussian_correlation

    np.testing.assert_allclose(gaussian_correlation(torch.tensor(e_s), 0.4, 12).numpy(), exact, rtol=1e-5)
    assert cc_loss_gaussian(torch.tensor(e_s), torch.tensor(e_s), 0.4, 2).item() == 0.0


def test_kernel_options_only_with_gaussian_form() -> None:
    with pytest.raises(kdhub.ConfigError, match="options gamma only apply to form: gaussian"):
        kdhub.create("method", "cc", gamma=0.5)
    with pytest.raises(pydantic.ValidationError, match="gamma, order only apply"):
        kdhub.get_plugin("method", "cc").Options(gamma=0.5, order=1)
    assert kdhub.create("method", "cc", form="gaussian", gamma=0.5, order=3).options.order == 3


@pytest.mark.parametrize("form", ["repdistiller", "gaussian"])
def test_method_contract(form: str) -> None:
    method = kdhub.create("method", "cc", form=form, embed_dim=16)
    check = check_method(method)
    assert method.per_sample is False
    # TinyNet pooled widths: student 4*8 = 32, teacher 4*16 = 64; both embeddings are trained
    assert (method.embed_s.in_features, method.embed_t.in_features, method.embed_s.out_features) == (32, 64, 16)
    assert check.loss > 0
