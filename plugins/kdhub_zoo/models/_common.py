"""What the zoo's model families share: nets that name their own feature taps, and the peers' inits."""

from __future__ import annotations

import math
import textwrap
from typing import Any, ClassVar

from torch import nn

import kdhub

__all__ = ["TappedNet", "ZooModel", "init_fan_out", "param_count"]


class TappedNet(nn.Module):
    """A network that knows the module names of its feature roles (see ``kdhub.FEATURE_ROLES``)."""

    def feature_taps(self) -> dict[str, list[str]]:
        raise NotImplementedError


class ZooModel(kdhub.Model):
    """Base of the zoo's plugins: ``taps(net)`` asks the net, and each named subclass gets the family's docs.

    A subclass sets ``family_doc`` (text with ``{name}`` placeholders); every named subclass's docstring
    becomes its own first line followed by that text, so ``kdhub show model resnet20`` prints the
    citation, the feature roles and a config snippet without repeating them in the source.
    """

    family_doc: ClassVar[str] = ""
    feature_roles: tuple[str, ...] | None = (
        "stem",
        "stages",
        "preact_stages",
        "bn_before_relu",
        "pooled",
        "classifier",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__doc__")
        if cls.__dict__.get("name") and own and cls.family_doc:
            family = textwrap.dedent(cls.family_doc).strip().format(name=cls.name)
            cls.__doc__ = f"{textwrap.dedent(own).strip()}\n\n{family}\n"

    def taps(self, net: nn.Module) -> dict[str, list[str]]:
        return net.feature_taps()  # type: ignore[operator]


def init_fan_out(net: nn.Module, linear_std: float | None = None) -> None:
    """The RepDistiller inits: convs N(0, 2 / (k*k*out)) (Kaiming fan-out), BN (1, 0), optional linear N(0, std)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def param_count(net: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in net.parameters())
