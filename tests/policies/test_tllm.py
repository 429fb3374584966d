"""TLLM: decisions on the worked curves of docs/reference-values.md, the loss under a stopped set, edge cases."""

from __future__ import annotations

import io
import math
import warnings
from typing import ClassVar

import pytest
import torch

import kdhub
from kdhub.engine.losses import method_loss
from kdhub.testing import test_batch

NAN = math.nan
# docs/reference-values.md, TLLM's worked curves: L_1 .. L_7 per class (epochs from 1).
CURVES = [
    [1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
    [1, 0.95, 0.9, 0.9, 0.9, 0.9, 0.9],
    [1, 1, 1.1, 1.2, 1.3, 1.3, 1.3],
    [1, 0.9, 0.8, 0.75, 0.75, 0.75, 0.75],
    [1, 0.9, NAN, 0.8, 0.7, 0.6, 0.5],
]


def epoch_losses(curves: list[list[float]], epoch: int) -> torch.Tensor:
    return torch.tensor([c[epoch - 1] for c in curves], dtype=torch.float32)


def feed(policy, log, curves, epochs) -> list[kdhub.EpochAction]:
    return [
        policy.epoch_ended(kdhub.EpochReport(epoch=e, log=log, class_losses=epoch_losses(curves, e))) for e in epochs
    ]


def make_tllm(make_ctx, epochs: int = 7, num_classes: int = 5, counts=None, **options) -> kdhub.Policy:
    options = {"start": 3, "window": 2, "eta": 0.01, **options}
    policy = kdhub.create("policy", "tllm", **options)
    policy.setup(make_ctx(epochs=epochs, num_classes=num_classes, counts=counts))
    return policy


def test_flags_and_defaults(make_ctx):
    cls = kdhub.get_plugin("policy", "tllm")
    assert cls.wants_class_losses
    assert cls.needs_validation
    policy = kdhub.create("policy", "tllm")
    policy.setup(make_ctx(epochs=100))
    assert (policy.start_epoch, policy.window_epochs, policy.end_epoch, policy.max_stopped) == (10, 5, None, 5)
    policy = kdhub.create("policy", "tllm")
    policy.setup(make_ctx(epochs=5))  # S = round(0.5) = 1, K = max(1, round(0.25)) = 1
    assert (policy.start_epoch, policy.window_epochs) == (1, 1)
    policy = kdhub.create("policy", "tllm", start=0)
    policy.setup(make_ctx(epochs=5))
    assert policy.start_epoch == 1  # there is no L_0
    policy = kdhub.create("policy", "tllm", start=5, window=1)
    with pytest.warns(UserWarning, match="no class will be stopped"):
        policy.setup(make_ctx(epochs=5))


def test_worked_example_sliding(make_ctx):
    policy, log = make_tllm(make_ctx), kdhub.MemoryLog()
    masks = {}
    for e in range(1, 8):
        feed(policy, log, CURVES, [e])
        masks[e] = policy.plan(e + 1, 0).class_mask
    # e=5: L_3 - L_5 = .8-.6 (0), .9-.9 = 0 <= .01 (1), 1.1-1.3 < 0 (2), .8-.75 = .05 (3), NaN (4)
    # e=6: L_4 - L_6 = .75-.75 = 0 for class 3; class 4: .8-.6 = .2
    assert policy.stopped == {1: 5, 2: 5, 3: 6}
    assert masks[4] is None
    assert masks[5].tolist() == [True, False, False, True, True]
    assert masks[6].tolist() == [True, False, False, False, True]
    assert masks[7] is masks[6]  # cached: rebuilt only when the stopped set changes
    assert masks[6].dtype == torch.bool
    assert masks[6].device == torch.device("cpu")
    assert [v for _, v in log.metric_history["tllm/stopped_classes"]] == [0, 0, 0, 0, 2, 3, 3]
    assert [s for s, _ in log.metric_history["tllm/stopped_classes"]] == list(range(1, 8))


def test_worked_example_fixed(make_ctx):
    policy, log = make_tllm(make_ctx, mode="fixed"), kdhub.MemoryLog()
    feed(policy, log, CURVES, range(1, 8))
    assert policy.stopped == {1: 5, 2: 5}


def test_plan_is_lean_and_keeps_weights(make_ctx):
    policy = make_tllm(make_ctx, kd_weight=0.5)
    first = policy.plan(1, 0)
    assert policy.plan(3, 17) is first
    # ce_weight None: the run's ce_weight, left alone by TLLM
    assert (first.ce_weight, first.kd_weight, first.class_mask, first.teacher_scale) == (None, 0.5, None, None)


class FeatureStyleKD(kdhub.Method):
    """A per-sample loss equal to KD's but declared feature-based (dropped, never replaced)."""

    name = "feature_style_kd_test"
    output_based: ClassVar[bool] = False

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        return kdhub.create("method", "kd", temperature=4).loss(out)


def test_loss_with_stopped_class(make_ctx):
    policy = make_tllm(make_ctx, num_classes=3)
    out = test_batch()
    # replacement: label-smoothed CE (alpha 0.1, T = 1) per sample on TB
    torch.testing.assert_close(policy.replacement_loss(out), torch.tensor([0.507606, 1.098612]), atol=1e-6, rtol=0)
    out.class_mask = torch.tensor([True, True, False])  # D = {2}: sample 0 (y=2) stopped, sample 1 (y=0) taught
    kd = kdhub.create("method", "kd", temperature=4)
    terms = method_loss(kd, out, policy.replacement_loss(out))
    # (l_LS,0 + l_KD,1) / B = (0.507606 + 0.328203) / 2
    assert sum(terms.values()).item() == pytest.approx(0.417904, abs=1e-6)
    # feature-style: dropped and divided by B: 0.328203 / 2
    terms = method_loss(FeatureStyleKD(), out, policy.replacement_loss(out))
    assert sum(terms.values()).item() == pytest.approx(0.164101, abs=1e-6)
    # replacement: none drops output-based losses too
    none = make_tllm(make_ctx, num_classes=3, replacement="none")
    assert none.replacement_loss(out) is None
    assert sum(method_loss(kd, out, none.replacement_loss(out)).values()).item() == pytest.approx(0.164101, abs=1e-6)


def test_smoothing_option_changes_replacement(make_ctx):
    policy = make_tllm(make_ctx, num_classes=3, smoothing=0.0)
    # plain CE of TB per sample: -log softmax([1,2,3])[2] = 0.407606, ln 3
    torch.testing.assert_close(policy.replacement_loss(test_batch()), torch.tensor([0.407606, math.log(3)]))


def test_sample_losses(make_ctx):
    policy = make_tllm(make_ctx, num_classes=3, temperature=4)
    given = torch.tensor([0.5, 0.25])
    assert policy.sample_losses(test_batch(), given) is given
    # only batch-relational methods: KD at the policy's temperature (T = 4 on TB)
    kd = policy.sample_losses(test_batch(), None)
    torch.testing.assert_close(kd, torch.tensor([1.319630, 0.328203]), atol=1e-6, rtol=0)
    policy = make_tllm(make_ctx, num_classes=3, temperature=1)
    torch.testing.assert_close(
        policy.sample_losses(test_batch(), None), torch.tensor([1.150421, 0.266217]), atol=1e-6, rtol=0
    )


@pytest.mark.filterwarnings("ignore:tllm. every class")
def test_nan_at_window_end_skips_that_epoch(make_ctx):
    curves = [[1, 1, 1, 1, NAN, 1, 1], [1, 1, 1, 1, 1, 1, 1]]
    policy = make_tllm(make_ctx, num_classes=2)
    feed(policy, kdhub.MemoryLog(), curves, range(1, 8))
    assert policy.stopped == {0: 6, 1: 5}  # class 0's decision at 5 (L_5 NaN) is skipped


def test_class_without_validation_sample_is_never_stopped(make_ctx):
    curves = [[1, 1, 1, 1, 1, 1, 1], [1] * 7]  # both flat: both would stop at 5
    policy = make_tllm(make_ctx, num_classes=2, counts=[0, 3])
    log = kdhub.MemoryLog()
    with pytest.warns(UserWarning, match="no validation sample.*c0") as record:
        feed(policy, log, curves, range(1, 8))
    assert len(record) == 1  # logged once
    assert policy.stopped == {1: 5}
    assert "c0" in log.texts["tllm_unvalidated_classes.txt"]


def test_unvalidated_inferred_from_nan_without_counts(make_ctx):
    nan_curve = [NAN] * 7
    policy = make_tllm(make_ctx, num_classes=2)
    with pytest.warns(UserWarning, match="no validation sample"):
        feed(policy, kdhub.MemoryLog(), [nan_curve, [1] * 7], range(1, 8))
    assert policy.stopped == {1: 5}


def test_all_classes_stopped_warns_once(make_ctx):
    flat = [[1.0] * 7 for _ in range(3)]
    policy = make_tllm(make_ctx, num_classes=3)
    with pytest.warns(UserWarning, match="every class is stopped") as record:
        feed(policy, kdhub.MemoryLog(), flat, range(1, 8))
    assert len([r for r in record if "every class" in str(r.message)]) == 1
    assert policy.plan(8, 0).class_mask.tolist() == [False, False, False]


def test_max_stopped_fraction_keeps_the_most_stagnant(make_ctx):
    # drops over the window ending at 5 (L_3 - L_5): class 0 -0.3, 1 0, 2 0, 3 -0.1, 4 0.5 (kept)
    curves = [
        [1, 1, 1.0, 1.1, 1.3, 1.3, 1.3],
        [1, 1, 1.0, 1.0, 1.0, 1.0, 1.0],
        [1, 1, 1.0, 1.0, 1.0, 1.0, 1.0],
        [1, 1, 1.0, 1.0, 1.1, 1.1, 1.1],
        [1, 1, 1.0, 0.8, 0.5, 0.3, 0.1],
    ]
    policy = make_tllm(make_ctx, max_stopped_fraction=0.5)  # floor(0.5 * 5) = 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # never all stopped, so no warning
        feed(policy, kdhub.MemoryLog(), curves, range(1, 8))
    assert policy.stopped == {0: 5, 3: 5}  # smallest drops first: -0.3, -0.1


def test_end_blocks_later_stops(make_ctx):
    policy = make_tllm(make_ctx, end=5)
    feed(policy, kdhub.MemoryLog(), CURVES, range(1, 8))
    assert policy.stopped == {1: 5, 2: 5}  # class 3 would stop at 6


def test_eta_threshold_is_inclusive(make_ctx):
    # loss fell by exactly 0.25 (binary-exact) over the window: stopped iff 0.25 <= eta
    curves = [[1, 1, 1.0, 1.0, 0.75, 0.75, 0.75]]
    for eta, expected in [(0.25, {0: 5}), (0.2, {})]:
        policy = make_tllm(make_ctx, num_classes=1, eta=eta, mode="fixed")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            feed(policy, kdhub.MemoryLog(), curves, range(1, 8))
        assert policy.stopped == expected


def test_logging_tables_and_figure(make_ctx):
    policy, log = make_tllm(make_ctx), kdhub.MemoryLog()
    feed(policy, log, CURVES, range(1, 8))
    curves = log.tables["tllm_curves"]
    assert curves["epoch"] == list(range(1, 8))
    assert curves["1"] == pytest.approx(CURVES[1])
    assert math.isnan(curves["4"][2])
    assert log.tables["tllm_stopped"] == {"class": [1, 2, 3], "name": ["c1", "c2", "c3"], "stopped_epoch": [5, 5, 6]}
    fig = log.figures["tllm_curves"]
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    assert "3 of 5" in fig.axes[0].get_title()
    assert log.param_values["tllm/start_epoch"] == 3
    assert log.param_values["tllm/window_epochs"] == 2


def test_missing_class_losses_is_an_error(make_ctx):
    policy = make_tllm(make_ctx)
    with pytest.raises(kdhub.KdhubError, match="class_losses"):
        policy.epoch_ended(kdhub.EpochReport(epoch=1, log=kdhub.MemoryLog()))


@pytest.mark.parametrize("mode", ["sliding", "fixed"])
@pytest.mark.parametrize("cut", [2, 4, 5, 6])
def test_resume_gives_the_same_decisions(make_ctx, mode, cut):
    full = make_tllm(make_ctx, mode=mode)
    feed(full, kdhub.MemoryLog(), CURVES, range(1, 8))

    first = make_tllm(make_ctx, mode=mode)
    feed(first, kdhub.MemoryLog(), CURVES, range(1, cut + 1))
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    resumed = make_tllm(make_ctx, mode=mode)
    resumed.load_state_dict(state)
    mask = first.plan(cut + 1, 0).class_mask
    got = resumed.plan(cut + 1, 0).class_mask
    assert (mask is None and got is None) or torch.equal(mask, got)
    log = kdhub.MemoryLog()
    feed(resumed, log, CURVES, range(cut + 1, 8))
    assert resumed.stopped == full.stopped
    assert resumed.curves.keys() == full.curves.keys()
    assert torch.equal(resumed.plan(8, 0).class_mask, full.plan(8, 0).class_mask)
    assert log.tables["tllm_curves"]["epoch"] == list(range(1, 8))


def test_load_state_before_setup(make_ctx):
    full = make_tllm(make_ctx)
    feed(full, kdhub.MemoryLog(), CURVES, range(1, 7))
    resumed = kdhub.create("policy", "tllm", start=3, window=2, eta=0.01)
    resumed.load_state_dict(full.state_dict())
    resumed.setup(make_ctx(epochs=7))
    assert torch.equal(resumed.plan(7, 0).class_mask, full.plan(7, 0).class_mask)


def test_needs_methods(make_ctx):
    ctx = make_ctx()
    ctx.method_names = []
    with pytest.raises(kdhub.ConfigError, match="no methods"):
        kdhub.create("policy", "tllm").setup(ctx)
