"""DKD: golden values on the reference batch TB (docs/reference-values.md), warm-up, stability, contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdhub
from kdhub.testing import check_method, test_batch
from kdhub_methods.dkd import dkd_terms


def _numpy_dkd(z_s: np.ndarray, z_t: np.ndarray, y: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Straight from the definitions: binary [p_y, 1 - p_y] KL and renormalised non-target KL."""

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p_s, p_t = softmax(z_s / t), softmax(z_t / t)
    tckd, nckd = [], []
    for i, label in enumerate(y):
        b_t = np.array([p_t[i, label], 1 - p_t[i, label]])
        b_s = np.array([p_s[i, label], 1 - p_s[i, label]])
        tckd.append(t * t * (b_t * np.log(b_t / b_s)).sum())
        rest = np.arange(z_s.shape[1]) != label
        q_t, q_s = p_t[i, rest] / p_t[i, rest].sum(), p_s[i, rest] / p_s[i, rest].sum()
        nckd.append(t * t * (q_t * np.log(q_t / q_s)).sum())
    return np.array(tckd), np.array(nckd)


def test_golden_on_test_batch() -> None:
    out = test_batch()
    out.epoch = 20  # past the warm-up: factor 1
    terms = kdhub.create("method", "dkd", alpha=1.0, beta=8.0, temperature=4.0).loss(out)
    tckd, nckd = terms["tckd"], terms["nckd"] / 8
    assert tckd.shape == nckd.shape == (2,)
    # docs/reference-values.md: TCKD 0.602433, NCKD 0.310721, alpha TCKD + beta NCKD 3.088202 (batch means)
    assert tckd.mean().item() == pytest.approx(0.602433, abs=1e-6)
    assert nckd.mean().item() == pytest.approx(0.310721, abs=1e-6)
    assert (terms["tckd"] + terms["nckd"]).mean().item() == pytest.approx(3.088202, abs=1e-6)
    ref_t, ref_n = _numpy_dkd(out.student_logits.numpy(), out.teacher_logits.numpy(), out.labels.numpy(), 4.0)
    torch.testing.assert_close(tckd, torch.tensor(ref_t, dtype=torch.float32))
    torch.testing.assert_close(nckd, torch.tensor(ref_n, dtype=torch.float32))


def test_warmup_counts_epochs_from_one() -> None:
    method = kdhub.create("method", "dkd", warmup=20)
    for epoch, factor in [(1, 1 / 20), (10, 0.5), (20, 1.0), (200, 1.0)]:
        assert method.warmup_factor(epoch) == pytest.approx(factor)
    out = test_batch()
    out.epoch = 20
    full = method.loss(out)
    out.epoch = 1
    first = method.loss(out)
    for key in ("tckd", "nckd"):
        torch.testing.assert_close(first[key] * 20, full[key])
    assert kdhub.create("method", "dkd", warmup=0).warmup_factor(1) == 1.0


def test_zero_when_student_equals_teacher_and_shift_invariant() -> None:
    torch.manual_seed(0)
    z = torch.randn(6, 10) * 3
    labels = torch.arange(6)
    out = kdhub.StepOutputs(student_logits=z, teacher_logits=z.clone(), labels=labels, indices=labels, epoch=30)
    terms = kdhub.create("method", "dkd").loss(out)
    assert terms["tckd"].abs().max() < 1e-6
    assert terms["nckd"].abs().max() < 1e-6
    shifted = kdhub.StepOutputs(
        student_logits=z + 5.0, teacher_logits=z.clone(), labels=labels, indices=labels, epoch=30
    )
    terms = kdhub.create("method", "dkd").loss(shifted)  # float32 round-off x T^2 x beta
    assert terms["tckd"].abs().max() < 1e-4
    assert terms["nckd"].abs().max() < 1e-4


def test_extreme_logits_stay_finite() -> None:
    # a teacher probability that underflows must not give NaN (mdistiller logs summed probabilities)
    z_s = torch.tensor([[200.0, -200.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    z_t = torch.tensor([[-300.0, 300.0, 0.0], [1e4, -1e4, 0.0]])
    out = kdhub.StepOutputs(
        student_logits=z_s, teacher_logits=z_t, labels=torch.tensor([0, 1]), indices=torch.tensor([0, 1]), epoch=20
    )
    terms = kdhub.create("method", "dkd", temperature=1.0).loss(out)
    total = sum(v.sum() for v in terms.values())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(z_s.grad).all()


def test_contract() -> None:
    method = kdhub.create("method", "dkd")
    assert method.per_sample
    assert method.output_based
    assert method.default_weight == 1.0
    result = check_method(method, epoch=5)
    assert set(result.terms) == {"tckd", "nckd"}


def _float64_reference(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
    """Per-sample TCKD in float64, with log(1 - p_y) = log1p(-p_y) (exact enough for any p_y)."""

    def log_binary(z: torch.Tensor) -> torch.Tensor:
        z = z.double() / t
        log_p = z.gather(1, y[:, None]).squeeze(1) - z.logsumexp(1)
        return torch.stack([log_p, torch.log1p(-log_p.exp())], 1)

    b_s, b_t = log_binary(z_s), log_binary(z_t)
    return t * t * (b_t.exp() * (b_t - b_s)).sum(1)


@pytest.mark.parametrize(("student_gap", "teacher_gap"), [(14.0, 12.0), (20.0, 16.0), (0.0, 0.0)])
def test_tckd_keeps_precision_when_the_target_probability_is_tiny(student_gap: float, teacher_gap: float) -> None:
    # large logits (around 40) with the target class 12-20 below the rest: p_y ~ 1e-8 .. 1e-10, where
    # logsumexp(non-target) - logsumexp(all) cancels in float32 (about 30-60 % error before the fix)
    gen = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(4, 100, generator=gen) + 40, torch.randn(4, 100, generator=gen) + 40
    y = torch.tensor([0, 1, 2, 3])
    z_s[torch.arange(4), y] -= student_gap
    z_t[torch.arange(4), y] -= teacher_gap
    tckd, _ = dkd_terms(z_s, z_t, y, 1.0)
    assert tckd.dtype == torch.float32
    reference = _float64_reference(z_s, z_t, y, 1.0)
    assert (reference > 0).all()
    torch.testing.assert_close(tckd.double(), reference, rtol=1e-4, atol=0.0)
