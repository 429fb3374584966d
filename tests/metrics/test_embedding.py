"""embedding: t-SNE of penultimate features of a fixed-seed subsample, coloured by a class set."""

from __future__ import annotations

import pytest
import torch

import kdhub
from kdhub_metrics.embedding import tsne_2d

FAST = {"max_iter": 250, "pca_dims": 5}


def test_tsne_keeps_separated_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0] * 8, [20.0] * 8, [-20.0] + [20.0] * 7])
    labels = torch.arange(45) % 3
    x = centres[labels] + torch.randn(45, 8, generator=gen)
    xy, perplexity = tsne_2d(x, perplexity=30.0, max_iter=500, pca_dims=0, seed=0)
    assert xy.shape == (45, 2)
    assert perplexity == pytest.approx(44 / 3)
    dist = torch.cdist(xy, xy) + torch.eye(45) * 1e9
    assert torch.equal(labels[dist.argmin(1)], labels)  # every point's 2-D neighbour is of its class


def test_metric_table_and_determinism(tiny, fake) -> None:
    metric = kdhub.create("metric", "embedding", max_samples=25, highlight=[3, 7], **FAST)
    result = fake.run(metric, tiny.student, tiny.teacher, tiny.pixels, tiny.labels, batch_size=16)
    table = result.tables["embedding"]
    assert set(table) == {"index", "label", "highlighted", "student_x", "student_y", "teacher_x", "teacher_y"}
    assert len(table["index"]) == 25
    assert table["index"] == sorted(table["index"])
    assert table["label"] == [i % 10 for i in table["index"]]
    assert table["highlighted"] == [int(y in (3, 7)) for y in table["label"]]
    assert result.scalars == {"samples": 25.0, "perplexity": 8.0}
    # the same subsample and the same map whatever the batching
    again = fake.run(
        kdhub.create("metric", "embedding", max_samples=25, highlight=[3, 7], **FAST),
        tiny.student,
        tiny.teacher,
        tiny.pixels,
        tiny.labels,
        batch_size=7,
    )
    assert again.tables["embedding"] == table


def test_uses_penultimate_features(tiny, fake) -> None:
    """The map embeds the 'pooled' features: identical features for student and teacher give identical maps."""
    metric = kdhub.create("metric", "embedding", max_samples=20, **FAST)
    result = fake.run(metric, tiny.student, tiny.student, tiny.pixels, tiny.labels, batch_size=16)
    table = result.tables["embedding"]
    assert table["student_x"] == table["teacher_x"]
    assert table["student_y"] == table["teacher_y"]


def test_bad_highlight(tiny, fake) -> None:
    with pytest.raises(kdhub.ConfigError, match="highlight"):
        fake.run(kdhub.create("metric", "embedding", highlight=[10]), tiny.student, None, tiny.pixels, tiny.labels, 16)
