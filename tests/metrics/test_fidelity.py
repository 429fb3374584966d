"""fidelity: average predictive KL at T = 1 and top-1 agreement, as sums over samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdhub
from kdhub.testing import test_batch
from kdhub_metrics.fidelity import predictive_kl


def run(batches: list[kdhub.EvalBatch], num_classes: int, fake) -> kdhub.MetricResult:
    metric = kdhub.create("metric", "fidelity")
    names = [str(i) for i in range(num_classes)]
    ctx = fake.ctx(torch.nn.Identity(), torch.nn.Identity(), 0, num_classes=num_classes, class_names=names)
    metric.reset(ctx)
    for batch in batches:
        metric.update(batch)
    return metric.compute()


def numpy_kl(zs: np.ndarray, zt: np.ndarray) -> np.ndarray:
    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lt, ls = log_softmax(zt), log_softmax(zs)
    return (np.exp(lt) * (lt - ls)).sum(axis=1)


def test_test_batch(fake) -> None:
    out = test_batch()
    result = run(
        [
            kdhub.EvalBatch(
                student_logits=out.student_logits,
                teacher_logits=out.teacher_logits,
                labels=out.labels,
                indices=out.indices,
            )
        ],
        3,
        fake,
    )
    assert result.scalars["kl"] == pytest.approx(0.708319, abs=1e-6)  # docs/reference-values.md: [1.150421, 0.266217]
    assert result.scalars["agreement"] == pytest.approx(50.0)
    table = result.tables["fidelity"]
    assert table["kl"][2] == pytest.approx(1.150421, abs=1e-6)
    assert table["kl"][0] == pytest.approx(0.266217, abs=1e-6)


def test_identical_outputs_give_zero(fake) -> None:
    z = torch.randn(16, 5) * 3
    result = run(
        [
            kdhub.EvalBatch(
                student_logits=z, teacher_logits=z.clone(), labels=torch.arange(16) % 5, indices=torch.arange(16)
            )
        ],
        5,
        fake,
    )
    assert result.scalars["kl"] == pytest.approx(0.0, abs=1e-12)
    assert result.scalars["agreement"] == 100.0


def test_partial_last_batch(fake) -> None:
    """10 samples in batches of 4, 4, 2: the sample mean, not the (biased) mean of batch means."""
    gen = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(10, 6, generator=gen) * 2, torch.randn(10, 6, generator=gen) * 2
    y = torch.arange(10) % 6
    batches = [
        kdhub.EvalBatch(
            student_logits=zs[i : i + 4],
            teacher_logits=zt[i : i + 4],
            labels=y[i : i + 4],
            indices=torch.arange(i, min(i + 4, 10)),
        )
        for i in (0, 4, 8)
    ]
    result = run(batches, 6, fake)
    per_sample = numpy_kl(zs.double().numpy(), zt.double().numpy())
    assert result.scalars["kl"] == pytest.approx(per_sample.mean(), rel=1e-12)
    batch_means = np.mean([per_sample[i : i + 4].mean() for i in (0, 4, 8)])
    assert abs(batch_means - per_sample.mean()) > 1e-3  # the test can tell the two apart


def test_stable_when_probabilities_underflow() -> None:
    zt = torch.tensor([[1000.0, 0.0, -1000.0]])
    zs = torch.tensor([[0.0, 0.0, 0.0]])
    kl = predictive_kl(zs, zt)
    assert torch.isfinite(kl).all()
    assert kl.item() == pytest.approx(np.log(3), rel=1e-9)  # p_t = one-hot: KL = -log q_0 = log 3
