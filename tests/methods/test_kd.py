"""KD against the hand-computed values on the reference batch TB (docs/reference-values.md; float32 at T = 4)."""

import pytest
import torch
import torch.nn.functional as F

import kdhub
from kdhub.engine.losses import method_loss
from kdhub.testing import check_method, test_batch


@pytest.mark.parametrize(
    ("temperature", "per_sample", "mean"),
    [(1.0, [1.150421, 0.266217], 0.708319), (4.0, [1.319630, 0.328203], 0.823917)],
)
def test_golden_values(temperature, per_sample, mean):
    kd = kdhub.create("method", "kd", temperature=temperature)
    out = test_batch()
    assert kd.loss(out).tolist() == pytest.approx(per_sample, abs=1e-6)
    assert method_loss(kd, out)[""].item() == pytest.approx(mean, abs=1e-6)


def test_cross_entropy_of_the_test_batch():
    out = test_batch()
    assert F.cross_entropy(out.student_logits, out.labels).item() == pytest.approx(0.753109, abs=1e-6)


def test_zero_when_student_equals_teacher_and_no_nan_on_underflow():
    out = test_batch()
    out.student_logits = out.teacher_logits.clone()
    assert kdhub.create("method", "kd").loss(out).abs().max() < 1e-7
    out.teacher_logits = torch.tensor([[1000.0, -1000.0, 0.0], [0.0, 0.0, 0.0]])  # p_t underflows to 0
    assert torch.isfinite(kdhub.create("method", "kd", temperature=1.0).loss(out)).all()


def test_per_class_mean_reduction_divides_by_the_class_count():
    out = test_batch()
    full = kdhub.create("method", "kd", temperature=1.0).loss(out)
    deit = kdhub.create("method", "kd", temperature=1.0, reduction="per_class_mean").loss(out)
    assert torch.allclose(deit, full / 3)


def test_class_mask_divides_by_the_batch_size():
    out = test_batch()
    out.class_mask = torch.tensor([True, True, False])  # sample 0 (class 2) is not taught
    loss = method_loss(kdhub.create("method", "kd", temperature=1.0), out)[""]
    assert loss.item() == pytest.approx(0.266217 / 2, abs=1e-6)


def test_contract():
    check_method(kdhub.create("method", "kd"))
