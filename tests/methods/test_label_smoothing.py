"""label_smoothing: golden values of docs/reference-values.md, the smoothing convention, no teacher needed."""

from __future__ import annotations

import math

import pytest
import torch

import kdhub
from kdhub.testing import check_method, test_batch


def test_golden_on_test_batch() -> None:
    # docs/reference-values.md: label-smoothed CE (alpha 0.1) = 0.803109, per sample [0.507606, 1.098612]
    loss = kdhub.create("method", "label_smoothing").loss(test_batch())
    assert loss.shape == (2,)
    assert loss.tolist() == pytest.approx([0.507606, 1.098612], abs=1e-6)
    assert loss.mean().item() == pytest.approx(0.803109, abs=1e-6)


def test_convention_spreads_alpha_over_all_classes() -> None:
    # row 1 of TB, y = 2: -log softmax([1,2,3]) = [2.407606, 1.407606, 0.407606]
    nll = [math.log(math.e + math.e**2 + math.e**3) - k for k in (1, 2, 3)]
    over_all = 0.9 * nll[2] + 0.1 / 3 * sum(nll)  # q = (1 - a) onehot + a / C
    over_rest = 0.9 * nll[2] + 0.1 / 2 * (nll[0] + nll[1])  # a over the C - 1 other classes
    assert over_all == pytest.approx(0.507606, abs=1e-6)
    assert over_rest == pytest.approx(0.557606, abs=1e-6)
    assert kdhub.create("method", "label_smoothing").loss(test_batch())[0].item() == pytest.approx(over_all, abs=1e-6)


def test_alpha_zero_is_cross_entropy() -> None:
    out = test_batch()
    loss = kdhub.create("method", "label_smoothing", alpha=0.0).loss(out)
    # docs/reference-values.md: CE on TB = 0.753109
    assert loss.mean().item() == pytest.approx(0.753109, abs=1e-6)


def test_contract_without_teacher() -> None:
    method = kdhub.create("method", "label_smoothing")
    assert not method.needs_teacher
    assert not method.output_based
    assert method.per_sample
    out = test_batch()
    out.teacher_logits = None
    assert torch.isfinite(method.loss(out)).all()
    result = check_method(method)
    assert result.outputs.teacher_logits is None
    assert torch.isfinite(result.loss)
