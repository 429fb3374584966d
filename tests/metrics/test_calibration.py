"""calibration: ECE with equal-width bins, for student and teacher."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import kdhub
from kdhub_metrics.calibration import bin_index


def run(batches: list[kdhub.EvalBatch], num_classes: int, fake, teacher: bool = False, **options) -> kdhub.MetricResult:
    metric = kdhub.create("metric", "calibration", **options)
    names = [str(i) for i in range(num_classes)]
    t = torch.nn.Identity() if teacher else None
    metric.reset(fake.ctx(torch.nn.Identity(), t, 0, num_classes=num_classes, class_names=names))
    for batch in batches:
        metric.update(batch)
    return metric.compute()


def logits_of(confidences: list[float]) -> torch.Tensor:
    """Two-class logits whose softmax is [c, 1 - c] (class 0 predicted when c > 0.5)."""
    c = torch.tensor(confidences, dtype=torch.float64)
    return torch.stack([c.log(), (1 - c).log()], dim=1)


def test_hand_computed_ece(fake) -> None:
    # confidences 0.9 (right), 0.9 (wrong), 0.62 (right), 0.75 (wrong), 15 bins:
    # 0.9 -> bin 13 (12/15 < .9 <= 14/15): |1 - 1.8| = 0.8; 0.62 -> bin 9: |1 - .62| = .38;
    # 0.75 -> bin 11: |0 - .75| = .75.  ECE = (0.8 + 0.38 + 0.75) / 4 = 0.4825
    z = logits_of([0.9, 0.9, 0.62, 0.75])
    y = torch.tensor([0, 1, 0, 1])
    result = run([kdhub.EvalBatch(student_logits=z, teacher_logits=None, labels=y, indices=torch.arange(4))], 2, fake)
    assert result.scalars["ece"] == pytest.approx(0.4825, abs=1e-12)
    table = result.tables["calibration"]
    assert table["count"][13] == 2
    assert table["count"][9] == 1
    assert table["count"][11] == 1
    assert table["accuracy"][13] == 0.5
    assert math.isnan(table["accuracy"][0])
    assert "teacher_ece" not in result.scalars


def test_bin_edges() -> None:
    # a bin is (lower, upper]; exactly 0 goes to the first bin
    c = torch.tensor([0.0, 1 / 4, 0.2500001, 0.5, 1.0], dtype=torch.float64)
    assert bin_index(c, 4).tolist() == [0, 0, 1, 1, 3]


def test_matches_numpy_reference(fake) -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(500, 7, generator=gen) * 2
    y = torch.randint(0, 7, (500,), generator=gen)
    result = run(
        [
            kdhub.EvalBatch(
                student_logits=z[i : i + 64],
                teacher_logits=None,
                labels=y[i : i + 64],
                indices=torch.arange(i, min(i + 64, 500)),
            )
            for i in range(0, 500, 64)
        ],
        7,
        fake,
    )
    p = torch.softmax(z.double(), 1).numpy()
    conf, pred = p.max(1), p.argmax(1)
    correct = pred == y.numpy()
    edges = np.linspace(0, 1, 16)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):  # Guo et al.'s loop
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    assert result.scalars["ece"] == pytest.approx(ece, rel=1e-9)


def test_teacher_and_bins_option(fake) -> None:
    zs = logits_of([0.9, 0.6])
    zt = logits_of([0.99, 0.99])
    y = torch.tensor([0, 0])
    result = run(
        [kdhub.EvalBatch(student_logits=zs, teacher_logits=zt, labels=y, indices=torch.arange(2))],
        2,
        fake,
        teacher=True,
        bins=2,
    )
    # student: bin 1 holds both: |2 - 1.5| / 2 = 0.25; teacher: |2 - 1.98| / 2 = 0.01
    assert result.scalars["ece"] == pytest.approx(0.25)
    assert result.scalars["teacher_ece"] == pytest.approx(0.01)
    assert len(result.tables["calibration"]["lower"]) == 2
