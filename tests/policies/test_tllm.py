"""TLLM: decisions on the worked curves of docs/reference-values.md, the loss under a stopped set, edge cases."""

from __future__ import annotations

import io
import math
import warnings
from typing import ClassVar

import numpy as np
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
    """The paper's criterion on the worked example's schedule (no cap, as the paper has none)."""
    options = {
        "criterion": "paper",
        "max_stopped_fraction": 1.0,
        "patience": 1,
        "end": None,
        "start": 3,
        "window": 2,
        "eta": 0.01,
        **options,
    }
    policy = kdhub.create("policy", "tllm", **options)
    policy.setup(make_ctx(epochs=epochs, num_classes=num_classes, counts=counts))
    return policy


def test_few_validation_samples_warn_only_without_the_noise_margin(make_ctx):
    few = [13, 40, 40, 40, 40]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default trend criterion weighs each class's noise already
        kdhub.create("policy", "tllm").setup(make_ctx(epochs=30, counts=few))
    for options in ({"criterion": "paper"}, {"noise_z": 0.0}):
        with pytest.warns(UserWarning, match="only 13 sample"):
            kdhub.create("policy", "tllm", **options).setup(make_ctx(epochs=30, counts=few))


def test_flags_and_defaults(make_ctx):
    cls = kdhub.get_plugin("policy", "tllm")
    assert cls.wants_class_losses
    assert cls.needs_validation
    policy = kdhub.create("policy", "tllm")
    assert (policy.options.criterion, policy.options.noise_z, policy.options.eta) == ("trend", 1.0, 0.0)
    policy.setup(make_ctx(epochs=100))
    # S = 0.2 * 100, K = 0.1 * 100, end 0.8 * 100, cap floor(0.5 * 5)
    assert (policy.start_epoch, policy.window_epochs, policy.end_epoch, policy.max_stopped) == (20, 10, 80, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 10-epoch run resolves to a judgeable window: no warning
        policy = kdhub.create("policy", "tllm")
        policy.setup(make_ctx(epochs=10))
    assert (policy.start_epoch, policy.window_epochs) == (2, 3)  # K = max(min_window 3, round(1)): 4 curve points
    policy = kdhub.create("policy", "tllm", min_window=5)
    with pytest.warns(UserWarning, match="no class will be stopped"):
        policy.setup(make_ctx(epochs=5))  # S = round(1.0) = 1, K = 5: the first decision (6) is after the run
    assert policy.window_epochs == 5
    policy = kdhub.create("policy", "tllm", start=0, window=3)
    policy.setup(make_ctx(epochs=5))
    assert policy.start_epoch == 1  # there is no L_0
    policy = kdhub.create("policy", "tllm", start=5, window=1)
    with pytest.warns(UserWarning, match="no class will be stopped"):
        policy.setup(make_ctx(epochs=5))


def test_short_window_and_small_validation_split_warn(make_ctx):
    policy = kdhub.create("policy", "tllm", criterion="paper", start=1, window=1)
    with pytest.warns(UserWarning, match="too short to tell a stagnating class from validation noise"):
        policy.setup(make_ctx(epochs=10))
    policy = kdhub.create("policy", "tllm", criterion="paper")
    with pytest.warns(UserWarning, match="only 3 sample"):
        policy.setup(make_ctx(epochs=10, counts=[3, 30, 30, 30, 30]))
    log = kdhub.MemoryLog()
    policy.epoch_ended(kdhub.EpochReport(epoch=1, log=log, class_losses=torch.ones(5)))
    assert "only 3 sample" in log.texts["tllm_warnings.txt"]


def test_describe_resolves_without_setup():
    policy = kdhub.create("policy", "tllm")
    described = policy.describe(8, 10)
    assert described["tllm/criterion"] == "trend"
    # S = round(1.6) = 2, K = max(3, round(0.8)) = 3, first decision 5, end round(6.4) = 6: checks at 5 and 6
    assert (described["tllm/start_epoch"], described["tllm/window_epochs"]) == (2, 3)
    assert described["tllm/first_decision_epoch"] == 5
    assert described["tllm/end_epoch"] == 6
    assert described["tllm/decision_epochs"] == 2
    assert described["tllm/patience"] == 2
    assert described["tllm/max_stopped"] == 5
    assert described["tllm/eta_unit"] == "fraction of the class's loss"
    paper = kdhub.create("policy", "tllm", criterion="paper", mode="fixed", start=0.1, window=0.05, end=0.5)
    described = paper.describe(240, 100)
    assert (described["tllm/start_epoch"], described["tllm/window_epochs"]) == (24, 12)
    assert described["tllm/decision_epochs"] == 1
    assert described["tllm/end_epoch"] == 120
    assert described["tllm/noise_z"] == "n/a"
    assert paper.problems(240, 100) == []
    assert any("too short" in p for p in kdhub.create("policy", "tllm", window=2).problems(100, 10))


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
    stopped = log.tables["tllm_stopped"]
    assert {k: stopped[k] for k in ("class", "name", "stopped_epoch")} == {
        "class": [1, 2, 3],
        "name": ["c1", "c2", "c3"],
        "stopped_epoch": [5, 5, 6],
    }
    assert stopped["drop"] == pytest.approx([0.0, -0.2, 0.0])  # L_{e-K} - L_e when each was stopped
    assert stopped["margin"] == [0.0, 0.0, 0.0]  # the paper's criterion has no noise margin
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


# the trend criterion (kdhub's default) ------------------------------------------------------------------

# K = 3 (epochs 1..4, S = 1): class 0 falls steadily, class 1 is flat with noise, class 2 rises.
TREND = [[1.0, 0.9, 0.8, 0.7], [1.0, 1.1, 0.9, 1.0], [0.5, 0.5, 0.6, 0.6]]


def test_trend_worked_example(make_ctx):
    """Each curve over its window, divided by its mean, fitted by least squares on x = 0..3 (Sxx = 5):
    class 0: relative drop 0.3 / 0.85 = 0.352941, no residual; class 1: slope -0.02, drop 0.06,
    residuals [-.03, .09, -.09, .03] (RSS 0.018); class 2: slope 0.8 / 11, drop -2.4 / 11 = -0.218182,
    RSS 0.8 / 121. Pooled s^2 = (0.018 + 0.8 / 121) / (3 classes * 2 dof); se = 3 sqrt(s^2 / 5) = 0.085927.
    Scores drop + 1 * se: 0.438868, 0.145927, -0.132255: with eta = 0 only the rising class 2 stops.
    """
    se = 3 * math.sqrt((0.018 + 0.8 / 121) / 6 / 5)
    assert se == pytest.approx(0.085927, abs=1e-6)
    policy = kdhub.create("policy", "tllm", start=1, window=3, patience=1, max_stopped_fraction=1.0)
    policy.setup(make_ctx(epochs=6, num_classes=3))
    for epoch in range(1, 5):
        policy.curves[epoch] = [c[epoch - 1] for c in TREND]
    scores = policy._trend_scores(4)
    assert [scores[m]["drop"] for m in range(3)] == pytest.approx([0.3 / 0.85, 0.06, -2.4 / 11])
    assert [scores[m]["margin"] for m in range(3)] == pytest.approx([se] * 3)
    assert policy.decide(4) == [2]
    assert policy.decisions[2]["score"] == pytest.approx(-2.4 / 11 + se)
    # without the noise margin and with eta = 0.1 (10 % of the class's loss over the window) the flat class stops too
    loose = kdhub.create("policy", "tllm", start=1, window=3, patience=1, noise_z=0, eta=0.1, max_stopped_fraction=1.0)
    loose.setup(make_ctx(epochs=6, num_classes=3))
    loose.curves = {e: [c[e - 1] for c in TREND] for e in range(1, 5)}
    assert loose.decide(4) == [1, 2]
    # the paper's criterion on the same window: L_1 - L_4 = 0.3, 0.0, -0.1 -> classes 1 and 2 with eta = 0
    paper = kdhub.create("policy", "tllm", criterion="paper", start=1, window=3, patience=1, max_stopped_fraction=1.0)
    paper.setup(make_ctx(epochs=6, num_classes=3))
    paper.curves = {e: [c[e - 1] for c in TREND] for e in range(1, 5)}
    assert paper.decide(4) == [1, 2]


def simulated_curves(seed: int, epochs: int, noise: float) -> tuple[list[list[float]], set[int]]:
    """10 classes of validation losses: 7 keep falling (exponential decay towards a floor), 3 stagnate
    from epoch 4 on (one flat, two rising); multiplicative noise of ``noise`` (relative std) per epoch."""
    rng = np.random.default_rng(seed)
    curves = []
    for m in range(10):
        level = 1.0 + 0.1 * m
        if m < 7:
            clean = [level * (0.4 + 0.6 * math.exp(-e / (0.6 * epochs))) for e in range(1, epochs + 1)]
        else:
            slope = 0.0 if m == 7 else 0.03
            clean = [level * (0.8 if e < 4 else 0.8 * (1 + slope * (e - 4))) for e in range(1, epochs + 1)]
        curves.append([v * (1 + noise * rng.standard_normal()) for v in clean])
    return curves, {7, 8, 9}


@pytest.mark.parametrize("seed", range(4))
def test_trend_ignores_noise_that_stops_classes_under_the_papers_criterion(make_ctx, seed):
    """On noisy curves (3 % per epoch), the paper's criterion with its former defaults (K = 1, eta = 0)
    stops falling classes at random; the trend criterion stops the stagnating ones and almost no other."""
    epochs = 20
    curves, stagnating = simulated_curves(seed, epochs, noise=0.03)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the paper's 1-epoch window warns
        paper = kdhub.create(
            "policy", "tllm", criterion="paper", start=2, window=1, patience=1, end=None, max_stopped_fraction=1.0
        )
        paper.setup(make_ctx(epochs=epochs, num_classes=10))
    trend = kdhub.create("policy", "tllm", max_stopped_fraction=1.0)  # default S = 4, K = 3 for 20 epochs
    trend.setup(make_ctx(epochs=epochs, num_classes=10))
    feed(paper, kdhub.MemoryLog(), curves, range(1, epochs + 1))
    feed(trend, kdhub.MemoryLog(), curves, range(1, epochs + 1))
    falling_stopped_by_paper = set(paper.stopped) - stagnating
    assert len(falling_stopped_by_paper) >= 4, paper.stopped  # noise alone stops most falling classes
    assert len(set(trend.stopped) & stagnating) >= 2, trend.stopped
    assert len(set(trend.stopped) - stagnating) <= 1, trend.stopped


def test_patience_needs_consecutive_stagnant_checks(make_ctx):
    """A class must look stagnant at `patience` consecutive checks: one noisy spike is not enough."""
    # class 0: a spike at epoch 4 makes the window 1..4 rise, the next window 2..5 falls again;
    # class 1: flat from epoch 2 on, stagnant at every check from epoch 5 (window 2..5) on.
    curves = [[1.0, 0.9, 0.8, 1.2, 0.6, 0.5, 0.4], [1.0, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]]
    for patience, expected in [(1, {0: 4, 1: 5}), (2, {1: 6}), (3, {1: 7})]:
        policy = kdhub.create(
            "policy", "tllm", start=1, window=3, noise_z=0, patience=patience, end=None, max_stopped_fraction=1.0
        )
        policy.setup(make_ctx(epochs=7, num_classes=2))
        feed(policy, kdhub.MemoryLog(), curves, range(1, 8))
        assert policy.stopped == expected, patience
    fixed = kdhub.create("policy", "tllm", start=1, window=3, noise_z=0, mode="fixed", max_stopped_fraction=1.0)
    fixed.setup(make_ctx(epochs=7, num_classes=2))
    feed(fixed, kdhub.MemoryLog(), curves, range(1, 8))
    assert fixed.stopped == {0: 4}  # one check only (epoch 4): patience does not apply
