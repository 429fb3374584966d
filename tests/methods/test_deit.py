"""DeiT hard-label distillation: golden values, teacher-scale invariance, contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kdhub
from kdhub.testing import check_method, test_batch


def test_golden_on_test_batch() -> None:
    # argmax z_t = [0, 0]; CE([1,2,3], 0) = log(e + e^2 + e^3) - 1 = 2.407606; CE([0,0,0], 0) = log 3
    loss = kdhub.create("method", "deit").loss(test_batch())
    expected = [math.log(math.e + math.e**2 + math.e**3) - 1, math.log(3)]
    assert loss.shape == (2,)
    assert loss.tolist() == pytest.approx(expected, abs=1e-6)
    assert expected[0] == pytest.approx(2.407606, abs=1e-6)


def test_label_smoothing_matches_torch_convention() -> None:
    out = test_batch()
    loss = kdhub.create("method", "deit", label_smoothing=0.1).loss(out)
    # q = 0.9 onehot(0) + 0.1 / 3: for row 1, 0.9 * 2.407606 + (0.1 / 3) * (2.407606 + 1.407606 + 0.407606)
    assert loss[0].item() == pytest.approx(0.9 * 2.407606 + 0.1 / 3 * (2.407606 + 1.407606 + 0.407606), abs=1e-5)
    reference = F.cross_entropy(out.student_logits, torch.tensor([0, 0]), reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(loss, reference)


def test_depends_on_the_teacher_only_through_its_top_class() -> None:
    out = test_batch()
    method = kdhub.create("method", "deit")
    scaled = kdhub.StepOutputs(
        student_logits=out.student_logits,
        teacher_logits=out.teacher_logits * 7 + 3,
        labels=out.labels,
        indices=out.indices,
    )
    torch.testing.assert_close(method.loss(out), method.loss(scaled))


def test_contract() -> None:
    method = kdhub.create("method", "deit")
    assert method.per_sample
    assert method.output_based
    assert method.default_weight == 0.5
    check_method(method)


def with_heads(out: kdhub.StepOutputs, heads: list[torch.Tensor]) -> kdhub.StepOutputs:
    return kdhub.StepOutputs(
        student_logits=out.student_logits,
        teacher_logits=out.teacher_logits,
        labels=out.labels,
        indices=out.indices,
        student_features={"heads": heads},
    )


def test_the_distillation_head_is_taught_when_the_student_has_one() -> None:
    out = test_batch()
    dist = torch.tensor([[0.0, 5.0, 0.0], [2.0, 0.0, 0.0]])
    expected = F.cross_entropy(dist, torch.tensor([0, 0]), reduction="none")
    auto = kdhub.create("method", "deit").loss(with_heads(out, [dist]))
    torch.testing.assert_close(auto, expected)
    torch.testing.assert_close(
        kdhub.create("method", "deit", head="distillation").loss(with_heads(out, [dist])), expected
    )
    class_head = kdhub.create("method", "deit", head="class").loss(with_heads(out, [dist]))
    torch.testing.assert_close(class_head, kdhub.create("method", "deit").loss(out))
    with pytest.raises(kdhub.IncompatibleError, match="returns \\(class logits, distillation logits\\)"):
        kdhub.create("method", "deit", head="distillation").loss(out)


def test_a_distilled_deit_student_trains_its_two_heads_and_is_evaluated_on_their_mean() -> None:
    from kdhub.engine.heads import eval_logits, split_heads
    from kdhub.engine.runner import run

    plugin = kdhub.create(
        "model", "timm:deit_tiny_distilled_patch16_224", distilled_training=True, kwargs={"patch_size": 8, "depth": 1}
    )
    net = plugin.build(10, 3, 16)
    x = torch.randn(3, 3, 16, 16)
    cls, heads = split_heads(net.train()(x))
    assert len(heads) == 1  # training: (class head, distillation head)
    torch.testing.assert_close(eval_logits((cls, heads[0])), (cls + heads[0]) / 2)
    net.eval()
    with torch.no_grad():
        tokens = net.forward_features(x)
        mean = (net.head(tokens[:, 0]) + net.head_dist(tokens[:, 1])) / 2
        torch.testing.assert_close(eval_logits(net(x)), mean)  # evaluation: the mean of the heads
    config = {
        "epochs": 1,
        "data": {
            "name": "synthetic",
            "options": {"num_classes": 10, "image_size": 16, "train_size": 64, "test_size": 32},
        },
        "student": {
            "name": "timm:deit_tiny_distilled_patch16_224",
            "options": {"distilled_training": True, "kwargs": {"patch_size": 8, "depth": 1}},
        },
        "teacher": {"name": "cnn", "options": {"width": 4}},
        "ce_weight": 0.0,
        "methods": [{"name": "label_smoothing", "weight": 0.5}, {"name": "deit", "weight": 0.5}],
        "metrics": ["accuracy"],
        "train": {"progress": False},
    }
    result = run(config, track=False)
    assert result.history[-1]["loss/deit"] > 0
    student = result.student.eval()
    test = kdhub.create("dataset", "synthetic", num_classes=10, image_size=16, train_size=64, test_size=32).load().test
    with torch.no_grad():
        logits = student((test.images.float() / 255 - 0.5) / 0.29)
    assert result.last_acc == pytest.approx((logits.argmax(1) == test.labels).float().mean().item() * 100)
