"""The plugin contract fails loudly: a loss of the wrong shape, a missing required method."""

from __future__ import annotations

import pytest
import torch

import kdhub
from kdhub.engine.runner import run
from kdhub.registry import loading as plugins
from kdhub.testing import check_method


class ScalarKD(kdhub.Method):
    """Says per_sample but returns the batch mean."""

    name = "scalar_kd"
    output_based = True

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        return (out.student_logits - out.teacher_logits).pow(2).mean()


class Register:
    @kdhub.hookimpl
    def kdhub_register_methods(self, register):
        register(ScalarKD)


def test_a_scalar_under_per_sample_is_refused_naming_the_method(tiny_config, register_plugin):
    with pytest.raises(
        kdhub.KdhubError, match=r"method 'scalar_kd': loss term 'loss' has shape \[\]; expected a per-sample"
    ):
        check_method(ScalarKD())
    register_plugin(Register(), "scalar-kd")
    config = {
        **tiny_config,
        "epochs": 1,
        "teacher": {"name": "cnn", "options": {"width": 8}},
        "methods": ["scalar_kd"],
    }
    with pytest.raises(kdhub.KdhubError, match=r"method 'scalar_kd'.*shape \[\].*per_sample = False"):
        run(config, track=False)


def test_a_method_without_loss_cannot_be_registered_or_made():
    class NoLoss(kdhub.Method):
        """Forgot loss()."""

        name = "no_loss"

    with pytest.raises(TypeError, match="abstract"):
        NoLoss()
    registry = plugins.get_registry()
    with pytest.raises(kdhub.KdhubError, match=r"does not implement loss\(\)"):
        registry.add("method", NoLoss, "tests")
