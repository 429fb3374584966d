"""Every analysis metric through a tiny fake evaluation: contract, batching and all-reduce invariance."""

from __future__ import annotations

import io

import pytest
from matplotlib.figure import Figure

import kdhub

# small options so each run stays fast; eigenspace takes every patch so that it is deterministic
CASES = {
    "agreement": {},
    "fidelity": {},
    "calibration": {},
    "cka": {"max_samples": 32, "examples": [0, 3, 39]},
    "confidence": {"max_samples": 32, "bins": 5},
    "confusion": {},
    "interpolation": {},
    "embedding": {"max_samples": 30, "max_iter": 250, "pca_dims": 5},
    "eigenspace": {"patches": 0, "top_k": 2},
}
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
    result = fake.run(make(name), tiny.student, tiny.teacher, tiny.images, tiny.labels, batch_size=16)
    check_result(result)
    if name == "interpolation":
        result = fake.run(make(name), tiny.student, tiny.teacher, tiny.images, tiny.labels, 16, split="train")
        check_result(result)


@pytest.mark.parametrize("name", sorted(n for n in CASES if not kdhub.get_plugin("metric", n).needs_teacher))
def test_without_teacher(name: str, tiny, fake) -> None:
    result = fake.run(make(name), tiny.student, None, tiny.images, tiny.labels, batch_size=16, split="train")
    check_result(result)
    assert not any(key.startswith("teacher") for key in result.scalars)


@pytest.mark.parametrize("name", sorted(n for n in CASES if kdhub.get_plugin("metric", n).needs_teacher))
def test_needs_teacher(name: str, tiny, fake) -> None:
    with pytest.raises(kdhub.IncompatibleError):
        fake.run(make(name), tiny.student, None, tiny.images, tiny.labels, batch_size=16)


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_batches_equal_one_batch_of_both(name: str, tiny, fake) -> None:
    """Accumulators are sums over samples: 40 samples in one batch or in batches of 24 and 16."""
    one = fake.run(make(name), tiny.student, tiny.teacher, tiny.images, tiny.labels, batch_size=40)
    two = fake.run(make(name), tiny.student, tiny.teacher, tiny.images, tiny.labels, batch_size=24)
    fake.results_equal(one, two, skip=BATCH_DEPENDENT.get(name, lambda key: False))


@pytest.mark.parametrize("name", sorted(CASES))
def test_all_reduce_of_two_processes(name: str, tiny, fake) -> None:
    """Two simulated processes (the engine's sharding, accumulators summed in place) equal one process."""
    single = fake.run(make(name), tiny.student, tiny.teacher, tiny.images, tiny.labels, batch_size=8)
    double = fake.distributed(lambda: make(name), tiny.student, tiny.teacher, tiny.images, tiny.labels, batch_size=8)
    fake.results_equal(single, double)


@pytest.mark.parametrize("name", sorted(CASES))
def test_process_without_batches(name: str, tiny, fake) -> None:
    """6 processes, 5 batches: the last process sees nothing yet must hold the same accumulators.

    CKA and embedding can allocate before the first batch only from dry-run feature shapes on the
    context (``student_shapes`` / ``teacher_shapes``, requested from the core)."""
    single = fake.run(make(name), tiny.student, tiny.teacher, tiny.images, tiny.labels, batch_size=8)
    many = fake.distributed(
        lambda: make(name), tiny.student, tiny.teacher, tiny.images, tiny.labels, 8, world=6, shapes=True
    )
    fake.results_equal(single, many)
