"""cka: linear, debiased and minibatch CKA (exact numbers from docs/reference-values.md), per-sample CKA, the metric."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdhub
from kdhub_metrics.cka import debiased_cka, gram, linear_cka, minibatch_cka, per_sample_cka, unbiased_hsic


@pytest.fixture
def xy() -> tuple[torch.Tensor, torch.Tensor]:
    np.random.seed(1337)  # NumPy's legacy RNG, as docs/reference-values.md states
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return torch.from_numpy(x), torch.from_numpy(y)


def numpy_hsic1(k: np.ndarray, lg: np.ndarray) -> float:
    """Independent reference: the unbiased HSIC estimator written out with NumPy."""
    b = k.shape[0]
    k, lg = k.copy(), lg.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(lg, 0)
    return (np.trace(k @ lg) + k.sum() * lg.sum() / ((b - 1) * (b - 2)) - 2 / (b - 2) * (k @ lg).sum()) / (b * (b - 3))


def test_golden_values(xy) -> None:
    x, y = xy
    assert linear_cka(x, y).item() == pytest.approx(0.557613, abs=1e-6)
    assert debiased_cka(x, y).item() == pytest.approx(0.513456, abs=1e-6)
    assert minibatch_cka(x, y, batch_size=25).item() == pytest.approx(0.513268, abs=1e-6)  # 4 contiguous batches
    assert minibatch_cka(list(x.split(25)), list(y.split(25))).item() == pytest.approx(0.513268, abs=1e-6)
    v = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    assert linear_cka(v, v**2).item() == pytest.approx(0.968992, abs=1e-6)


def test_gram_form_equals_feature_form(xy) -> None:
    x, y = xy
    wide_x, wide_y = x[:8], y[:8]  # n < p: the Gram path
    xc, yc = wide_x - wide_x.mean(0), wide_y - wide_y.mean(0)
    direct = (yc.T @ xc).square().sum() / (torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc))
    assert linear_cka(wide_x, wide_y).item() == pytest.approx(direct.item(), rel=1e-12)


def test_unbiased_hsic_matches_numpy(xy) -> None:
    x, y = xy
    k, lg = (x @ x.T).numpy(), (y @ y.T).numpy()
    assert unbiased_hsic(torch.from_numpy(k), torch.from_numpy(lg)).item() == pytest.approx(
        numpy_hsic1(k, lg), rel=1e-12
    )
    with pytest.raises(ValueError, match="at least 4 samples"):
        unbiased_hsic(torch.eye(3), torch.eye(3))


def test_invariances(xy) -> None:
    x, y = xy
    base = linear_cka(x, y).item()
    assert linear_cka(x, x).item() == pytest.approx(1.0)
    assert debiased_cka(x, x).item() == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    assert linear_cka(x @ q, y).item() == pytest.approx(base, rel=1e-10)
    assert linear_cka(3.5 * x, y).item() == pytest.approx(base, rel=1e-10)
    assert debiased_cka(x @ q, 0.2 * y).item() == pytest.approx(debiased_cka(x, y).item(), rel=1e-10)
    a = torch.diag(torch.tensor([1.0, 10, 1, 1, 1, 1, 1, 1, 1, 0.1], dtype=torch.float64))  # invertible, not orthogonal
    assert abs(linear_cka(x @ a, y).item() - base) > 0.01


def test_minibatch_close_to_full_on_4096_samples() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 32, generator=gen, dtype=torch.float64)
    y = x[:, :16] @ torch.randn(16, 16, generator=gen, dtype=torch.float64) + 2 * torch.randn(
        4096, 16, generator=gen, dtype=torch.float64
    )
    full = linear_cka(x, y).item()
    assert 0.2 < full < 0.8  # a non-trivial pair
    assert abs(minibatch_cka(x, y, batch_size=256).item() - full) < 0.02


def test_smaller_last_batch_is_dropped(xy) -> None:
    x, y = xy
    assert minibatch_cka(x[:90], y[:90], batch_size=25).item() == pytest.approx(
        minibatch_cka(x[:75], y[:75], 25).item()
    )


def test_non_positive_denominator_is_nan(xy) -> None:
    x, _ = xy
    zeros = torch.zeros(100, 4, dtype=torch.float64)
    assert math.isnan(linear_cka(x, zeros).item())
    assert math.isnan(minibatch_cka(x, zeros, batch_size=25).item())
    assert math.isnan(linear_cka(torch.ones(5, 3), torch.randn(5, 3)).item())  # constant features centre to 0


def test_gram_chunks_and_centres(xy) -> None:
    x, _ = xy
    xc = x - x.mean(0)
    assert torch.allclose(gram(x, center=True), xc @ xc.T)
    assert torch.allclose(gram(x.reshape(100, 2, 5)), x @ x.T)


def test_per_sample_cka() -> None:
    gen = torch.Generator().manual_seed(0)
    small = torch.randn(8, 4, 4, generator=gen)
    assert per_sample_cka(small, small).item() == pytest.approx(1.0)
    big = small.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # 8x8, pools back to `small`
    assert per_sample_cka(big, small[torch.randperm(8, generator=gen)]).item() == pytest.approx(1.0)
    other = torch.randn(16, 8, 8, generator=gen)
    # spatial positions as rows: X = H*W x C after pooling the larger map (other) to 4x4
    expected = linear_cka(small.flatten(1).T, F.adaptive_avg_pool2d(other, 4).flatten(1).T).item()
    assert per_sample_cka(other, small).item() == pytest.approx(expected)
    assert math.isnan(per_sample_cka(torch.randn(5), torch.randn(5)).item())


def test_metric_on_identical_models(tiny, fake) -> None:
    teacher = copy.deepcopy(tiny.student)
    metric = kdhub.create("metric", "cka", max_samples=40, examples=[1, 2])
    result = fake.run(metric, tiny.student, teacher, tiny.pixels, tiny.labels, batch_size=8)
    for key in ("full_s0_t0", "full_s2_t2", "minibatch_s1_t1", "full_mean", "minibatch_mean"):
        assert result.scalars[key] == pytest.approx(1.0), key
    assert result.scalars["full_samples"] == 40.0
    assert result.scalars["minibatch_batches"] == 5.0
    per = result.tables["cka_per_sample"]
    assert per["index"] == [1, 2]
    assert per["label"] == [1, 2]
    assert per["s0_t0"] == pytest.approx([1.0, 1.0])


def test_metric_values_match_the_functions(tiny, fake) -> None:
    metric = kdhub.create("metric", "cka", pairs=[(0, 2), (1, 1)], examples=[5])
    result = fake.run(metric, tiny.student, tiny.teacher, tiny.pixels, tiny.labels, batch_size=16)
    feats = {}
    for who, net in (("s", tiny.student), ("t", tiny.teacher)):
        batches = list(fake.batches(metric, net, None, tiny.images, tiny.labels, 16))
        feats[who] = [torch.cat([b.student_features["stages"][i] for b in batches]) for i in range(3)]
    s0, t2, s1, t1 = feats["s"][0], feats["t"][2], feats["s"][1], feats["t"][1]
    assert result.scalars["full_s0_t2"] == pytest.approx(linear_cka(s0, t2).item(), rel=1e-5)
    assert result.scalars["full_s1_t1"] == pytest.approx(linear_cka(s1, t1).item(), rel=1e-5)
    # batches 16, 16, 8: the last is dropped
    assert result.scalars["minibatch_batches"] == 2.0
    assert result.scalars["minibatch_batch_size"] == 16.0
    assert result.scalars["minibatch_s0_t2"] == pytest.approx(minibatch_cka(s0[:32], t2[:32], 16).item(), rel=1e-9)
    assert result.tables["cka_per_sample"]["s0_t2"][0] == pytest.approx(per_sample_cka(s0[5], t2[5]).item(), rel=1e-5)
    assert set(result.tables["cka"]["pair"]) == {"s0_t2", "s1_t1"}


def test_memory_bound_and_options(tiny, fake) -> None:
    # stage floats per sample: student 8*8*8 + 16*4*4 + 32*2*2 = 896, teacher (width 16) 1792 -> 10752 bytes
    metric = kdhub.create("metric", "cka", max_samples=2048, max_memory_mb=0.2, examples=[])
    result = fake.run(metric, tiny.student, tiny.teacher, tiny.pixels, tiny.labels, batch_size=16)
    assert result.scalars["full_samples"] == 19.0  # floor(0.2 * 2**20 / 10752)
    assert "cka_per_sample" not in result.tables
    tiny_budget = kdhub.create("metric", "cka", max_memory_mb=0.01)  # room for no sample: said, not hidden
    result = fake.run(tiny_budget, tiny.student, tiny.teacher, tiny.pixels, tiny.labels, batch_size=16)
    assert result.scalars["full_samples"] == 0.0
    assert math.isnan(result.scalars["full_mean"])
    off = kdhub.create("metric", "cka", max_samples=0, minibatch=False)
    result = fake.run(off, tiny.student, tiny.teacher, tiny.pixels, tiny.labels, batch_size=16)
    assert not any(k.startswith(("full", "minibatch")) for k in result.scalars)
    with pytest.raises(kdhub.IncompatibleError, match="out of range"):
        fake.run(
            kdhub.create("metric", "cka", pairs=[(0, 3)]), tiny.student, tiny.teacher, tiny.pixels, tiny.labels, 16
        )
