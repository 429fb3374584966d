import math

import pytest
import torch

import kdhub
from kdhub.testing import check_method, test_batch


def test_registered_through_entry_point():
    assert "cosine" in kdhub.list_plugins("method")
    assert kdhub.get_plugin("method", "cosine").__module__ == "kdhub_cosine.cosine"


def test_golden_value_on_test_batch():
    # sample 0: centred z_s = [-1, 0, 1], z_t = [1, 0, -1] -> cos = -1 -> loss 2
    # sample 1: centred z_s = 0 (norm guarded by eps) -> cos = 0 -> loss 1
    loss = kdhub.create("method", "cosine").loss(test_batch())
    assert loss.tolist() == pytest.approx([2.0, 1.0])


def test_invariant_to_shift_and_scale():
    out = test_batch()
    out.student_logits = torch.tensor([[0.5, -1.0, 2.0], [3.0, 1.0, 0.0]])
    base = kdhub.create("method", "cosine").loss(out)
    out.student_logits = 3 * out.student_logits + 7
    assert torch.allclose(kdhub.create("method", "cosine").loss(out), base, atol=1e-6)


def test_zero_when_equal():
    out = test_batch()
    out.student_logits = out.teacher_logits.clone()
    assert kdhub.create("method", "cosine").loss(out).abs().max() < 1e-6


def test_contract():
    result = check_method(kdhub.create("method", "cosine"))
    assert math.isfinite(result.loss.item())


def test_bad_option_is_rejected():
    with pytest.raises(kdhub.ConfigError, match="eps"):
        kdhub.create("method", "cosine", eps=-1)
