"""The model contract: build a network and name the modules whose outputs are features."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from torch import nn

from kdhub.contract.base import Plugin

__all__ = ["FEATURE_ROLES", "Model"]

FEATURE_ROLES = {
    "stages": "output of each stage (after its last activation), in network order",
    "preact_stages": "the same stages before their last ReLU (OFD, pre-activation distillation)",
    "bn_before_relu": "the BatchNorm modules whose output feeds each stage's last ReLU (OFD's margins)",
    "pooled": "the penultimate feature vector [B, D] fed to the classifier",
    "stem": "output of the stem (first conv block) before the stages",
    "classifier": "the final linear layer (its input is 'pooled', its output the logits)",
    "heads": "extra output heads of a model that returns a tuple of logits in training (DeiT's distillation "
    "head), given by the engine, not tapped; evaluation uses the mean of all heads",
}
"""Standard roles; a model plugin may name any of them and more of its own."""


class Model(Plugin):
    """Base of every model plugin.

    ``taps(net)`` maps a role to module names of ``net``; a name taps the module's output, and
    ``"<name>:input"`` taps its input (e.g. the input of a final ReLU is the pre-activation).

    ``feature_roles`` (a class default; a property where an option decides) lists the roles the
    model provides, so a config asking for others is refused before anything is built; ``None``
    means "known only once built" (e.g. timm models), checked when the run builds the model.
    """

    kind: ClassVar[str] = "model"
    CAPABILITIES: ClassVar[tuple[str, ...]] = ("feature_roles",)
    feature_roles: tuple[str, ...] | None = None

    @abstractmethod
    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        """A new network (random weights) for the data's classes, channels and image size."""

    def taps(self, net: nn.Module) -> dict[str, list[str]]:
        """Feature role -> names of ``net``'s modules whose outputs (or ``name:input``) are the features."""
        return {}
