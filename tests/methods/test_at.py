"""AT: golden attention loss, invariances, spatial pooling, stage choice and the method contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdhub
from kdhub.testing import TINY_TAPS, TinyNet, check_method, setup_method
from kdhub_methods.at import at_loss


def _numpy_at(f_s: np.ndarray, f_t: np.ndarray, p: float) -> np.ndarray:
    def att(f: np.ndarray) -> np.ndarray:
        a = (np.abs(f) ** p).mean(axis=1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return ((att(f_s) - att(f_t)) ** 2).mean(axis=1)


def test_golden_by_hand() -> None:
    # student channels [1, 0] and [1, 2] over 2 positions: mean_c f^2 = [1, 2] -> [1, 2]/sqrt(5);
    # teacher mean_c f^2 = [2, 1] -> [2, 1]/sqrt(5); mean of squared differences = (1/5 + 1/5)/2 = 0.2
    f_s = torch.tensor([[1.0, 0.0], [1.0, 2.0]]).view(1, 2, 1, 2)
    f_t = torch.tensor([[2.0, 1.0]]).sqrt().view(1, 1, 1, 2)
    torch.testing.assert_close(at_loss(f_s, f_t, 2.0), torch.tensor([0.2]))


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0])
def test_matches_numpy(p: float) -> None:
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(3, 4, 5, 5)), rng.normal(size=(3, 6, 5, 5))
    got = at_loss(torch.tensor(f_s, dtype=torch.float32), torch.tensor(f_t, dtype=torch.float32), p)
    np.testing.assert_allclose(got.numpy(), _numpy_at(f_s, f_t, p), rtol=1e-5, atol=1e-7)


def test_invariances() -> None:
    torch.manual_seed(0)
    f = torch.randn(4, 8, 6, 6)
    torch.testing.assert_close(at_loss(f, f, 2.0), torch.zeros(4))
    # positive scale and channel permutation of the student leave the attention map unchanged
    g = torch.randn(4, 3, 6, 6)
    base = at_loss(f, g, 2.0)
    torch.testing.assert_close(at_loss(3.0 * f[:, torch.randperm(8)], g, 2.0), base)


def test_larger_map_is_average_pooled() -> None:
    torch.manual_seed(0)
    f_s, f_t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)
    pooled = torch.nn.functional.avg_pool2d(f_s, 2)
    torch.testing.assert_close(at_loss(f_s, f_t, 2.0), at_loss(pooled, f_t, 2.0))
    torch.testing.assert_close(at_loss(f_t, f_s, 2.0), at_loss(f_t, pooled, 2.0))


def test_loss_sums_the_chosen_stages() -> None:
    method = kdhub.create("method", "at", stages=[0, -1])
    setup_method(method, TinyNet(width=8), TinyNet(width=16), TINY_TAPS, TINY_TAPS, torch.randn(2, 3, 16, 16), 10)
    torch.manual_seed(1)
    f_s = [torch.randn(2, 4, 4, 4) for _ in range(3)]
    f_t = [torch.randn(2, 5, 4, 4) for _ in range(3)]
    out = kdhub.StepOutputs(
        student_logits=torch.zeros(2, 10),
        teacher_logits=torch.zeros(2, 10),
        labels=torch.tensor([0, 1]),
        indices=torch.arange(2),
        student_features={"stages": f_s},
        teacher_features={"stages": f_t},
    )
    want = at_loss(f_s[0], f_t[0], 2.0) + at_loss(f_s[2], f_t[2], 2.0)
    torch.testing.assert_close(method.loss(out), want)


def test_unequal_stage_counts_need_explicit_stages() -> None:
    taps = dict(TINY_TAPS, stages=TINY_TAPS["stages"][:2])
    method = kdhub.create("method", "at")
    with pytest.raises(kdhub.IncompatibleError, match="option `stages`"):
        setup_method(method, TinyNet(width=8), TinyNet(width=16), taps, TINY_TAPS, torch.randn(2, 3, 16, 16), 10)


def test_method_contract() -> None:
    check = check_method(kdhub.create("method", "at"))
    assert check.loss > 0
