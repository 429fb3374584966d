"""Annealing KD: Phi, the two phases and the restore/reset action at the boundary."""

from __future__ import annotations

import pytest
import torch

import kdhub
from kdhub.engine.losses import method_loss
from kdhub_policies.annealing import annealing_factor


def make_annealing(make_ctx, epochs: int = 30, ce_weight: float = 1.0, **options) -> kdhub.Policy:
    policy = kdhub.create("policy", "annealing", **options)
    policy.setup(make_ctx(epochs=epochs, ce_weight=ce_weight))
    return policy


def test_phi_golden_values():
    # E1 = 200, tau_max = 10: P = 20, Phi = min(10, 1 + (e-1)//20) / 10
    got = [annealing_factor(e, 200, 10) for e in (1, 20, 21, 101, 180, 181, 200)]
    assert got == pytest.approx([0.1, 0.1, 0.2, 0.6, 0.9, 1.0, 1.0])
    # E1 = 25: P = 2, 1 + 24 // 2 = 13 -> clamped to 10 / 10
    assert annealing_factor(25, 25, 10) == 1.0
    assert max(annealing_factor(e, 25, 10) for e in range(1, 26)) == 1.0
    # E1 < tau_max: P = 1, Phi rises by 1/tau_max per epoch
    assert [annealing_factor(e, 3, 10) for e in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.3])


def test_phases_and_plans(make_ctx):
    policy = make_annealing(make_ctx, epochs=300, phase1_epochs=200)
    for e, phi in [(1, 0.1), (21, 0.2), (181, 1.0), (200, 1.0)]:
        plan = policy.plan(e, 0)
        assert (plan.ce_weight, plan.kd_weight, plan.class_mask) == (0.0, 1.0, None)
        assert plan.teacher_scale == pytest.approx(phi)
    assert policy.plan(5, 0) is policy.plan(5, 99)
    later = policy.plan(201, 0)
    assert (later.ce_weight, later.kd_weight, later.teacher_scale) == (1.0, 0.0, None)
    assert policy.plan(300, 0) is later


def test_default_phase1_is_two_thirds(make_ctx):
    policy = make_annealing(make_ctx, epochs=30)
    assert policy.phase1_epochs == 20
    assert policy.period == 2
    assert policy.plan(20, 0).kd_weight == 1.0
    assert policy.plan(21, 0).kd_weight == 0.0


def test_boundary_action_and_logging(make_ctx):
    policy, log = make_annealing(make_ctx, epochs=6, phase1_epochs=4, tau_max=2), kdhub.MemoryLog()
    actions = [policy.epoch_ended(kdhub.EpochReport(epoch=e, log=log)) for e in range(1, 7)]
    assert actions[3] == kdhub.EpochAction(restore_best=True, reset_optimizer=True)
    assert all(a == kdhub.EpochAction() for i, a in enumerate(actions) if i != 3)
    # P = 4 // 2 = 2: Phi = .5, .5, 1, 1
    assert log.metric_history["annealing/phi"] == [(1, 0.5), (2, 0.5), (3, 1.0), (4, 1.0)]
    assert [v for _, v in log.metric_history["annealing/phase"]] == [1, 1, 1, 1, 2, 2]
    assert log.param_values["annealing/phase2_start_epoch"] == 5
    assert "phase 2 starts at epoch 5" in log.texts["annealing_boundary.txt"]


def test_options_reach_the_action(make_ctx):
    policy = make_annealing(make_ctx, epochs=6, phase1_epochs=4, phase2_from_best=False, reset_optimizer=False)
    assert policy.needs_validation is False
    assert kdhub.get_plugin("policy", "annealing").needs_validation
    log = kdhub.MemoryLog()
    actions = [policy.epoch_ended(kdhub.EpochReport(epoch=e, log=log)) for e in range(1, 7)]
    assert actions[3] == kdhub.EpochAction(restore_best=False, reset_optimizer=False)
    policy = make_annealing(make_ctx, epochs=6, phase1_epochs=4, reset_optimizer=False)
    actions = [policy.epoch_ended(kdhub.EpochReport(epoch=e, log=log)) for e in range(1, 7)]
    assert actions[3] == kdhub.EpochAction(restore_best=True, reset_optimizer=False)


def test_warnings(make_ctx):
    with pytest.warns(UserWarning, match="ce_weight=0.1 is not used"):
        make_annealing(make_ctx, ce_weight=0.1)
    with pytest.warns(UserWarning, match="no phase 2"):
        policy = make_annealing(make_ctx, epochs=5, phase1_epochs=5)
    log = kdhub.MemoryLog()
    assert all(policy.epoch_ended(kdhub.EpochReport(epoch=e, log=log)) == kdhub.EpochAction() for e in range(1, 6))


def test_resume_after_boundary_does_not_repeat_it(make_ctx):
    policy, log = make_annealing(make_ctx, epochs=6, phase1_epochs=4), kdhub.MemoryLog()
    for e in range(1, 5):
        policy.epoch_ended(kdhub.EpochReport(epoch=e, log=log))
    resumed = make_annealing(make_ctx, epochs=6, phase1_epochs=4)
    resumed.load_state_dict(policy.state_dict())
    assert resumed.epoch_ended(kdhub.EpochReport(epoch=4, log=log)) == kdhub.EpochAction()
    before = make_annealing(make_ctx, epochs=6, phase1_epochs=4)
    before.load_state_dict({"boundary_done": False, "logged": True})
    assert before.epoch_ended(kdhub.EpochReport(epoch=4, log=log)).restore_best


@pytest.mark.skipif("mse_logits" not in kdhub.list_plugins("method"), reason="mse_logits not written yet")
def test_with_mse_logits():
    # docs/reference-values.md: z_s = 0, z_t = [2, -1, 0], Phi = 0.1: mean((0 - [.2, -.1, 0])^2) = .05 / 3
    z_t = torch.tensor([[2.0, -1.0, 0.0]])
    out = kdhub.StepOutputs(
        student_logits=torch.zeros(1, 3),
        teacher_logits=annealing_factor(1, 200, 10) * z_t,
        labels=torch.tensor([0]),
        indices=torch.tensor([0]),
    )
    loss = sum(method_loss(kdhub.create("method", "mse_logits"), out).values())
    assert loss.item() == pytest.approx(0.016667, abs=1e-6)
