"""confidence: logit-transformed top-class probabilities of teacher (u) and student (v), OLS fits."""

from __future__ import annotations

import math

import pytest
import torch

import kdhub
from kdhub_metrics._support import fit_line
from kdhub_metrics.confidence import logit_confidence


def run(
    zs: torch.Tensor, zt: torch.Tensor, fake, batch_size: int = 3, num_samples: int = 0, **options
) -> kdhub.MetricResult:
    c = zs.shape[1]
    metric = kdhub.create("metric", "confidence", **options)
    n = zs.shape[0]
    ctx = fake.ctx(
        torch.nn.Identity(),
        torch.nn.Identity(),
        num_samples or n,
        num_classes=c,
        class_names=[str(i) for i in range(c)],
    )
    metric.reset(ctx)
    y = torch.zeros(n, dtype=torch.long)
    for i in range(0, n, batch_size):
        metric.update(
            kdhub.EvalBatch(
                student_logits=zs[i : i + batch_size],
                teacher_logits=zt[i : i + batch_size],
                labels=y[i : i + batch_size],
                indices=torch.arange(i, min(i + batch_size, n)),
            )
        )
    return metric.compute()


def test_phi_golden() -> None:
    # phi_0([2, 0, 0]) = 2 - log(e^0 + e^0) = 2 - ln 2
    phi = logit_confidence(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]))
    assert phi.item() == pytest.approx(1.306853, abs=1e-6)
    assert phi.item() == pytest.approx(2 - math.log(2), abs=1e-12)


def test_phi_is_log_odds_and_stable() -> None:
    z = torch.randn(50, 6, dtype=torch.float64)
    k = torch.randint(0, 6, (50,))
    p = torch.softmax(z, 1).gather(1, k[:, None]).squeeze(1)
    assert torch.allclose(logit_confidence(z, k), torch.log(p / (1 - p)), atol=1e-10)
    big = logit_confidence(torch.tensor([[1000.0, 0.0, 0.0]]), torch.tensor([0]))
    assert big.item() == pytest.approx(1000 - math.log(2))  # log(p / (1 - p)) would be inf


def test_slope_two_intercept_zero(fake) -> None:
    # binary z_t = [c, 0], z_s = [2c, 0]: u = c, v = 2c (logsumexp of the single other logit 0 is 0)
    c = torch.tensor([0.5, 1.0, 2.0, 3.0])
    zt = torch.stack([c, torch.zeros(4)], 1)
    zs = torch.stack([2 * c, torch.zeros(4)], 1)
    result = run(zs, zt, fake, q=50)
    assert result.scalars["slope"] == pytest.approx(2.0)
    assert result.scalars["intercept"] == pytest.approx(0.0, abs=1e-12)
    assert result.scalars["r"] == pytest.approx(1.0)
    assert result.scalars["n"] == 4.0
    assert result.scalars["low_slope"] == pytest.approx(2.0)
    assert result.scalars["low_n"] == 2.0
    assert result.scalars["high_slope"] == pytest.approx(2.0)
    assert result.scalars["high_n"] == 2.0


def test_constant_shift_gives_slope_one(fake) -> None:
    zt = torch.randn(40, 5) * 2
    result = run(zt + 3.7, zt, fake, batch_size=7)
    assert result.scalars["slope"] == pytest.approx(1.0, abs=1e-6)
    assert result.scalars["intercept"] == pytest.approx(0.0, abs=1e-5)


def test_low_and_high_parts(fake) -> None:
    # u = 1..8 (binary logits [u, 0]); v = 3u on the lowest 25% (u = 1, 2), v = 0.5u + 5 on the highest (7, 8)
    u = torch.arange(1.0, 9.0)
    v = torch.where(u <= 2, 3 * u, torch.where(u >= 7, 0.5 * u + 5, u))
    order = torch.randperm(8, generator=torch.Generator().manual_seed(1))  # arrival order must not matter
    zt = torch.stack([u, torch.zeros(8)], 1)[order]
    zs = torch.stack([v, torch.zeros(8)], 1)[order]
    result = run(zs, zt, fake, q=25)
    assert result.scalars["low_slope"] == pytest.approx(3.0)
    assert result.scalars["low_intercept"] == pytest.approx(0.0, abs=1e-9)
    assert result.scalars["high_slope"] == pytest.approx(0.5)
    assert result.scalars["high_intercept"] == pytest.approx(5.0)
    assert result.scalars["low_n"] == 2.0
    assert result.scalars["high_n"] == 2.0


def test_fit_line_degenerate_cases() -> None:
    assert math.isnan(fit_line(torch.tensor([1.0]), torch.tensor([2.0]))["slope"])
    flat = fit_line(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 2.0, 3.0]))
    assert math.isnan(flat["slope"])
    assert math.isnan(flat["intercept"])
    assert math.isnan(flat["r"])
    assert flat["n"] == 3.0
    # independent numpy-style check of OLS and Pearson r
    u = torch.tensor([1.0, 2.0, 4.0, 7.0])
    v = torch.tensor([2.0, 1.0, 5.0, 6.0])
    fit = fit_line(u, v)
    # mean u 3.5, mean v 3.5; Suu = 21, Svv = 17, Suv = 17 -> slope 17/21, r = 17 / sqrt(21 * 17)
    assert fit["slope"] == pytest.approx(17 / 21)
    assert fit["intercept"] == pytest.approx(3.5 - 3.5 * 17 / 21)
    assert fit["r"] == pytest.approx(17 / math.sqrt(21 * 17))


def test_bounded_fixed_subsample(fake) -> None:
    zt = torch.randn(40, 5)
    zs = zt * 1.5
    a = run(zs, zt, fake, batch_size=40, max_samples=10)
    b = run(zs, zt, fake, batch_size=3, max_samples=10)
    assert a.scalars["n"] == 10.0
    assert a.tables["confidence_bins"] == b.tables["confidence_bins"]  # the same 10 samples whatever the batching


def test_quantile_bins(fake) -> None:
    u = torch.arange(1.0, 41.0)
    zt = torch.stack([u, torch.zeros(40)], 1)
    result = run(zt * 2, zt, fake, batch_size=8, bins=4)
    # 4 equal-count bins of u = 1..40: means 5.5, 15.5, 25.5, 35.5; v = 2u
    assert result.tables["confidence_bins"]["u_mean"] == pytest.approx([5.5, 15.5, 25.5, 35.5])
    assert result.tables["confidence_bins"]["v_mean"] == pytest.approx([11.0, 31.0, 51.0, 71.0])
