"""No host synchronisation in a training step: every built-in method and policy, through the engine.

On CPU, :class:`HostSyncCounter` records Python-level host reads (``.item()``, ``bool(t)``, ...)
and the aten operators that synchronise on CUDA, during the training steps only (the epoch's
statistics, evaluation and ``epoch_ended`` are once per epoch and outside the steps). On CUDA,
``torch.cuda.set_sync_debug_mode("error")`` raises at any synchronising call in a step.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, ClassVar

import pytest
import torch

import kdhub
from kdhub.contract.config_loading import parse_config
from kdhub.engine import losses
from kdhub.engine.hostsync import CudaSyncGuard, HostSyncCounter, training_steps
from kdhub.engine.loop import Trainer

METHODS = sorted(
    n for n in kdhub.list_plugins("method") if kdhub.get_plugin("method", n).__module__.startswith("kdhub_methods.")
)
POLICIES = sorted(
    n for n in kdhub.list_plugins("policy") if kdhub.get_plugin("policy", n).__module__.startswith("kdhub_policies.")
)
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "ab": {"init_epochs": 1},
    "ft": {"init_epochs": 1},
    "fsp": {"init_epochs": 1},
    "crd": {"num_negatives": 8},
}
# options that make each policy act inside a 3-epoch run (switch, stop classes, ...), and its method
POLICY_SETUP: dict[str, tuple[dict[str, Any], str]] = {
    "constant": ({}, "kd"),
    "eskd": ({"stop_at": 2}, "kd"),
    "annealing": ({"phase1_epochs": 2}, "mse_logits"),
    "loss_switch": ({"at": 2, "window": 0.5}, "kd"),
    # the paper's criterion with a huge eta, no patience and no end: classes stop after epoch 2 of 3
    "tllm": (
        {"criterion": "paper", "start": 1, "window": 1, "eta": 100.0, "max_stopped_fraction": 0.5, "patience": 1},
        "kd",
    ),
}
NEEDS_VALIDATION = {"tllm", "annealing"}


def config(
    method: str, policy: str = "constant", policy_options: dict | None = None, epochs: int = 1, device: str = "cpu"
) -> dict[str, Any]:
    return {
        "seed": 0,
        "epochs": epochs,
        "data": {
            "name": "synthetic",
            "options": {"num_classes": 4, "image_size": 8, "train_size": 64, "test_size": 16, "crop_padding": 2},
            "batch_size": 16,
            "val_fraction": 0.25 if policy in NEEDS_VALIDATION else 0.0,
        },
        "student": {"name": "cnn", "options": {"width": 4, "depth": 2}},
        "teacher": {"name": "cnn", "options": {"width": 4 if method == "fsp" else 8, "depth": 2}},  # FSP: equal widths
        "methods": [{"name": method, "options": METHOD_OPTIONS.get(method, {})}],
        "policy": {"name": policy, "options": policy_options or {}},
        "metrics": ["accuracy"],
        "train": {"device": device, "progress": False},
    }


def fit_counting(cfg: dict[str, Any]) -> tuple[Trainer, HostSyncCounter]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random teachers, CRD's clamped negatives
        with Trainer(parse_config(cfg)) as trainer, HostSyncCounter() as syncs:
            trainer.fit()
    return trainer, syncs


@pytest.mark.parametrize("amp", ["none", "bf16"])
@pytest.mark.parametrize("method", METHODS)
def test_method_training_steps_make_no_host_sync(method, amp):
    cfg = config(method)
    cfg["train"]["amp"] = amp  # bf16: the methods' own layers run under the forward's autocast
    trainer, syncs = fit_counting(cfg)
    init_steps = trainer.steps_per_epoch if method in METHOD_OPTIONS and "init_epochs" in METHOD_OPTIONS[method] else 0
    assert syncs.steps == trainer.steps_per_epoch + init_steps == 4 + init_steps
    assert not syncs.events, syncs.report()
    terms = {k: v for k, v in trainer.history[0].items() if k.startswith(f"loss/{method}")}
    assert terms
    assert all(math.isfinite(v) for v in terms.values()), terms


@pytest.mark.parametrize("amp", ["none", "bf16"])
@pytest.mark.parametrize("policy", POLICIES)
def test_policy_training_steps_make_no_host_sync(policy, amp):
    options, method = POLICY_SETUP.get(policy, ({}, "kd"))
    cfg = config(method, policy, options, epochs=3)
    cfg["train"]["amp"] = amp
    trainer, syncs = fit_counting(cfg)
    assert syncs.steps == 3 * trainer.steps_per_epoch
    assert not syncs.events, syncs.report()
    history = trainer.history
    if policy == "tllm":  # classes were stopped after epoch 2: epoch 3 trained under a class mask
        assert trainer.policy.stopped
        assert "loss/kd.replaced" in history[2]
    elif policy in ("eskd", "annealing", "loss_switch"):  # the policy switched the weights during the run
        assert history[0]["policy/distill_factor"] != history[-1]["policy/distill_factor"]


def test_batch_relational_method_under_a_class_mask_syncs_once_per_step():
    """The documented exception: the taught samples of a batch are selected by a data-dependent count."""
    options, _ = POLICY_SETUP["tllm"]
    trainer, syncs = fit_counting(config("rkd", "tllm", options, epochs=3))
    assert trainer.policy.stopped
    masked_steps = trainer.steps_per_epoch  # epoch 3 only
    assert syncs.counts() == {"aten.nonzero": masked_steps}
    line = next(i for i, text in enumerate(inspect.getsource(losses).splitlines(), 1) if "taught.nonzero()" in text)
    assert {e.where for e in syncs.events} == {f"{losses.__file__}:{line}"}


class _Syncing(kdhub.Method):
    """KD with the host reads a careless method makes: float(), bool(), .item(), a boolean mask."""

    name = "syncing_for_test"
    output_based = True
    per_sample: ClassVar[bool] = False

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        value = (out.student_logits - out.teacher_logits).square().mean()
        if bool(value > 1e9):  # bool
            value = value * 0
        scale = float(value.detach()) * 0 + 1.0  # float
        _ = value.item()  # item
        kept = out.student_logits[out.labels > 0]  # boolean-mask index: aten.index with a bool index
        return value * scale + 0 * kept.sum()


class _Register:
    @kdhub.hookimpl
    def kdhub_register_methods(self, register: Any) -> None:
        register(_Syncing)


@pytest.fixture
def syncing_method(register_plugin):
    register_plugin(_Register(), "host-sync-test")
    return "syncing_for_test"


def test_the_counter_sees_host_syncs_in_steps_only(syncing_method):
    trainer, syncs = fit_counting(config(syncing_method))
    steps = trainer.steps_per_epoch
    counts = syncs.counts()
    assert counts["bool"] == counts["float"] == counts["item"] == steps
    assert counts["aten.index"] == counts["aten.index_put"] == steps  # the mask, forward and backward
    # _train_epoch's one .tolist() per epoch and the evaluation's .item() are outside the steps
    assert "tolist" not in counts
    assert sum(counts.values()) == 5 * steps
    assert all("test_host_sync.py" in e.where for e in syncs.events if e.kind != "aten.index_put")


def test_the_counter_sees_aten_syncs_and_restores_tensor_methods():
    original = torch.Tensor.item
    weights = torch.ones(2, 8)
    with HostSyncCounter() as syncs:
        for _ in training_steps(range(2)):
            torch.multinomial(weights, 3)
            torch.arange(4).nonzero()
        torch.arange(4).nonzero()  # outside a step: not counted
    assert syncs.steps == 2
    assert syncs.counts() == {"aten.multinomial": 2, "aten.nonzero": 2}
    assert torch.Tensor.item is original


def test_training_steps_without_an_observer_is_the_iterator_itself():
    batches = [1, 2, 3]
    assert training_steps(batches) is batches


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@CUDA
@pytest.mark.parametrize("method", METHODS)
def test_cuda_method_steps_pass_sync_debug_mode_error(method):
    cfg = config(method, device="cuda")
    cfg["train"]["amp"] = "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Trainer(parse_config(cfg)) as trainer, CudaSyncGuard("error") as guard:
            trainer.fit()
    assert guard.steps >= trainer.steps_per_epoch


@CUDA
@pytest.mark.parametrize("policy", POLICIES)
def test_cuda_policy_steps_pass_sync_debug_mode_error(policy):
    options, method = POLICY_SETUP.get(policy, ({}, "kd"))
    cfg = config(method, policy, options, epochs=3, device="cuda")
    cfg["train"]["amp"] = "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Trainer(parse_config(cfg)) as trainer, CudaSyncGuard("error") as guard:
            trainer.fit()
    assert guard.steps == 3 * trainer.steps_per_epoch
    assert torch.cuda.get_sync_debug_mode() == 0
