"""loss_switch: exact weights per step, abrupt and gradual, both directions."""

from __future__ import annotations

import pytest

import kdhub


def make_switch(make_ctx, epochs: int = 10, steps: int = 4, **options) -> kdhub.Policy:
    policy = kdhub.create("policy", "loss_switch", **options)
    policy.setup(make_ctx(epochs=epochs, steps_per_epoch=steps, ce_weight=0.1))
    return policy


def w(policy, step: int, steps: int = 4) -> tuple[float, float]:
    plan = policy.plan(step // steps + 1, step)
    assert plan.class_mask is None
    assert plan.teacher_scale is None
    return plan.ce_weight, plan.kd_weight


def test_abrupt_kd_to_ce(make_ctx):
    policy = make_switch(make_ctx)  # at = 0.5 * 10 = epoch 5 = global step 16
    assert (policy.at_epoch, policy.start_step) == (5, 16)
    assert [w(policy, s) for s in (0, 15, 16, 39)] == [(0.1, 1.0), (0.1, 1.0), (1.0, 0.0), (1.0, 0.0)]
    assert policy.plan(1, 0) is policy.plan(4, 15)


def test_gradual_kd_to_ce(make_ctx):
    policy = make_switch(make_ctx, at=5, window=1.5, kd_weight=0.9)  # 6 steps: 16 .. 22
    # lambda = (s - 16) / 6; w_kd = (1 - l) 0.9, w_ce = l + (1 - l) 0.1
    expected = {15: (0.1, 0.9), 16: (0.1, 0.9), 17: (0.25, 0.75), 19: (0.55, 0.45), 21: (0.85, 0.15), 22: (1.0, 0.0)}
    for step, (ce, kd) in expected.items():
        assert w(policy, step) == pytest.approx((ce, kd)), step
    assert policy.lam(19) == 0.5


def test_ce_to_kd_is_the_mirror(make_ctx):
    policy = make_switch(make_ctx, direction="ce_to_kd", at=5, window=0.5)  # 2 steps: 16, 17
    assert [w(policy, s) for s in (15, 16)] == [(1.0, 0.0), (1.0, 0.0)]
    assert w(policy, 17) == pytest.approx((0.55, 0.5))  # l = .5: w_kd = .5, w_ce = .5 + .5 * .1
    assert w(policy, 18) == pytest.approx((0.1, 1.0))
    mirror = make_switch(make_ctx, at=5, window=0.5)
    for lam in (0.0, 0.3, 1.0):
        assert policy.weights(lam) == pytest.approx(mirror.weights(1 - lam))


def test_at_zero_and_one_switch_from_the_start(make_ctx):
    for at in (0, 1):
        assert w(make_switch(make_ctx, at=at), 0) == (1.0, 0.0)


def test_abrupt_kd_to_ce_equals_eskd(make_ctx):
    for at in (0, 3, 0.5, 0.75):
        switch = make_switch(make_ctx, at=at)
        eskd = kdhub.create("policy", "eskd", stop_at=at)
        eskd.setup(make_ctx(epochs=10, steps_per_epoch=4, ce_weight=0.1))
        for step in range(40):
            a, b = switch.plan(step // 4 + 1, step), eskd.plan(step // 4 + 1, step)
            b_ce = eskd.ctx.ce_weight if b.ce_weight is None else b.ce_weight  # None: the run's ce_weight
            assert (a.ce_weight, a.kd_weight) == (b_ce, b.kd_weight), (at, step)


def test_logging_and_state(make_ctx):
    policy, log = make_switch(make_ctx, at=2, window=1.0), kdhub.MemoryLog()
    for e in range(1, 4):
        policy.epoch_ended(kdhub.EpochReport(epoch=e, log=log))
    # value at each epoch's last step: steps 3, 7 (l = 3/4), 11
    assert log.metric_history["loss_switch/lambda"] == [(1, 0.0), (2, 0.75), (3, 1.0)]
    assert log.metric_history["loss_switch/kd_weight"][1] == (2, pytest.approx(0.25))
    assert log.param_values == {"loss_switch/at_epoch": 2, "loss_switch/start_step": 4, "loss_switch/end_step": 8.0}
    resumed = make_switch(make_ctx, at=2, window=1.0)
    resumed.load_state_dict(policy.state_dict())
    assert [w(resumed, s) for s in range(40)] == [w(policy, s) for s in range(40)]
    log2 = kdhub.MemoryLog()
    resumed.epoch_ended(kdhub.EpochReport(epoch=4, log=log2))
    assert log2.param_values == {}
