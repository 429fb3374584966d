"""ESKD: distillation weights before and after stop_at, logging, resume."""

from __future__ import annotations

import pytest

import kdhub


def make_eskd(make_ctx, epochs: int = 8, **options) -> kdhub.Policy:
    policy = kdhub.create("policy", "eskd", **options)
    policy.setup(make_ctx(epochs=epochs, ce_weight=0.1))
    return policy


def weights(policy, epochs: int, steps: int = 4) -> list[tuple[float, float]]:
    out = []
    for e in range(1, epochs + 1):
        plan = policy.plan(e, (e - 1) * steps)
        assert plan is policy.plan(e, e * steps - 1)  # same cached plan through the epoch
        assert plan.class_mask is None
        assert plan.teacher_scale is None
        # None = the run's ce_weight (0.1 here): ESKD leaves it alone before the stop
        assert (plan.ce_weight is None) == (plan.kd_weight > 0 or policy.stop_epoch > e)
        out.append((policy.ctx.ce_weight if plan.ce_weight is None else plan.ce_weight, plan.kd_weight))
    return out


def test_default_stops_at_three_quarters(make_ctx):
    policy = make_eskd(make_ctx)  # 0.75 * 8 = 6: epochs >= 6 without distillation
    assert policy.stop_epoch == 6
    assert weights(policy, 8) == [(0.1, 1.0)] * 5 + [(1.0, 0.0)] * 3


def test_epoch_and_options(make_ctx):
    policy = make_eskd(make_ctx, stop_at=3, ce_weight_after=0.5, kd_weight=0.9)
    assert weights(policy, 8) == [(0.1, 0.9)] * 2 + [(0.5, 0.0)] * 6
    assert make_eskd(make_ctx, epochs=240).stop_epoch == 180  # the recipe: distils in epochs 1-179
    assert make_eskd(make_ctx, epochs=10, stop_at=0.75).stop_epoch == 8  # 7.5 rounds to 8


def test_stop_at_zero_never_distils_and_late_stop_warns(make_ctx):
    assert weights(make_eskd(make_ctx, stop_at=0), 8) == [(1.0, 0.0)] * 8
    with pytest.warns(UserWarning, match="never stopped"):
        policy = make_eskd(make_ctx, stop_at=20)
    assert weights(policy, 8) == [(0.1, 1.0)] * 8


def test_logging(make_ctx):
    policy, log = make_eskd(make_ctx, stop_at=3), kdhub.MemoryLog()
    for e in range(1, 6):
        assert policy.epoch_ended(kdhub.EpochReport(epoch=e, log=log)) == kdhub.EpochAction()
    assert log.metric_history["eskd/kd_active"] == [(1, 1.0), (2, 1.0), (3, 0.0), (4, 0.0), (5, 0.0)]
    assert log.param_values == {"eskd/stop_epoch": 3}
    assert "after epoch 2" in log.texts["eskd_stop.txt"]


def test_state_round_trip(make_ctx):
    policy, log = make_eskd(make_ctx, stop_at=3), kdhub.MemoryLog()
    policy.epoch_ended(kdhub.EpochReport(epoch=1, log=log))
    resumed = make_eskd(make_ctx, stop_at=3)
    resumed.load_state_dict(policy.state_dict())
    assert weights(resumed, 8) == weights(policy, 8)
    log2 = kdhub.MemoryLog()
    resumed.epoch_ended(kdhub.EpochReport(epoch=2, log=log2))
    assert log2.param_values == {}  # params were logged before the checkpoint
    changed = make_eskd(make_ctx, stop_at=4)
    with pytest.warns(UserWarning, match="checkpoint stopped distillation at epoch 3"):
        changed.load_state_dict(policy.state_dict())
