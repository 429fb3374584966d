"""Every analysis metric through a tiny fake evaluation: contract, batching and all-reduce invariance."""

from __future__ import annotations

import io

import pytest
import torch
from matplotlib.figure import Figure

import kdhub
from kdhub.testing import check_metric

# small options so each run stays fast; eigenspace takes every patch so that it is deterministic
CASES = {
    "agreement": {},
    "fidelity": {},
    "calibration": {},
    "cka": {"max_samples": 32, "examples": [0, 3, 39]},
    "confidence": {"max_samples": 32, "bins": 5},
    "interpolation": {},
    "embedding": {"max_samples": 30, "max_iter": 250, "pca_dims": 5},
    "eigenspace": {"patches": 0, "top_k": 2},
}
SPLIT = {"interpolation": "train"}  # the split each metric is meant for (the default: test)
BATCH_DEPENDENT = {"cka": lambda key: key.startswith("minibatch")}  # minibatch CKA depends on the batches


def make(name: str) -> kdhub.Metric:
    return kdhub.create("metric", name, **CASES[name])


def check_result(result: kdhub.MetricResult) -> None:
    assert result.scalars, "no scalars"
    for key, value in result.scalars.items():
        assert isinstance(value, float), (key, type(value))
        assert "/" not in key
    for name, table in result.tables.items():
        lengths = {len(col) for col in table.values()}
        assert len(lengths) == 1, f"table {name} has columns of different lengths"
    for name, figure in result.figures.items():
        assert isinstance(figure, Figure), name
        figure.savefig(io.BytesIO(), format="png")


@pytest.mark.parametrize("name", sorted(CASES))
def test_documented_options(name: str) -> None:
    cls = kdhub.get_plugin("metric", name)
    doc = cls.__doc__ or ""
    assert "Config" in doc, "docstring needs a config snippet"
    assert f"name: {name}" in doc, "docstring needs a config snippet"
    for field, info in cls.Options.model_fields.items():
        assert info.description, f"option {field} has no description"


@pytest.mark.parametrize("name", sorted(CASES))
def test_fake_evaluation(name: str, tiny, fake) -> None:
    result = fake.run(
        make(name), tiny.student, tiny.teacher, tiny.pixels, tiny.labels, batch_size=16, split=SPLIT.get(name, "test")
    )
    check_result(result)


@pytest.mark.parametrize("name", sorted(n for n in CASES if not kdhub.get_plugin("metric", n).needs_teacher))
def test_without_teacher(name: str, tiny, fake) -> None:
    result = fake.run(make(name), tiny.student, None, tiny.pixels, tiny.labels, batch_size=16, split="train")
    check_result(result)
    assert not any(key.startswith("teacher") for key in result.scalars)


@pytest.mark.parametrize("name", sorted(n for n in CASES if kdhub.get_plugin("metric", n).needs_teacher))
def test_needs_teacher(name: str, tiny, fake) -> None:
    with pytest.raises(kdhub.IncompatibleError):
        fake.run(make(name), tiny.student, None, tiny.pixels, tiny.labels, batch_size=16)


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_metric(name: str) -> None:
    """kdhub.testing.check_metric: the engine's evaluation in one batch, in batches of 16 and 7, on 2 and 3
    simulated processes and on one more process than there are batches (a process without a batch)."""
    result = check_metric(
        lambda: make(name), batch_dependent=BATCH_DEPENDENT.get(name, lambda key: False), split=SPLIT.get(name, "test")
    )
    check_result(result)


def test_check_metric_catches_a_mean_of_batch_means() -> None:
    """A metric that averages per-batch means (wrong on a partial last batch) fails the check."""

    class MeanOfMeans(kdhub.Metric):
        name = "mean_of_means"

        def reset(self, ctx: kdhub.MetricContext) -> None:
            super().reset(ctx)
            self.sum = torch.zeros((), dtype=torch.float64)
            self.batches = torch.zeros((), dtype=torch.float64)

        def update(self, batch: kdhub.EvalBatch) -> None:
            self.sum += batch.student_logits.double().max(1).values.mean()
            self.batches += 1

        def accumulators(self) -> dict[str, torch.Tensor]:
            return {"sum": self.sum, "batches": self.batches}

        def compute(self) -> kdhub.MetricResult:
            return kdhub.MetricResult(scalars={"max_logit": (self.sum / self.batches).item()})

    with pytest.raises(AssertionError, match="max_logit"):
        check_metric(MeanOfMeans)
