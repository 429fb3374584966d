"""Any torchvision classification model as a kdhub model: ``torchvision:<name>``."""

from __future__ import annotations

import difflib
from typing import Any

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

import kdhub

_RESERVED = {"num_classes", "weights"}


def _last_linear(net: nn.Module) -> str | None:
    names = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _set_module(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)


def torchvision_taps(net: nn.Module) -> dict[str, list[str]]:
    """Roles of a torchvision model, by its structure; ``pooled``/``classifier`` from its last linear layer."""
    taps: dict[str, list[str]] = {}
    children = dict(net.named_children())
    if all(f"layer{i}" in children for i in (1, 2, 3, 4)):  # resnet, resnext, wide_resnet
        taps["stem"] = ["maxpool"]
        taps["stages"] = [f"layer{i}" for i in (1, 2, 3, 4)]
    elif "trunk_output" in children:  # regnet
        taps["stem"] = ["stem"]
        taps["stages"] = [f"trunk_output.{name}" for name, _ in net.trunk_output.named_children()]
    elif all(f"stage{i}" in children for i in (2, 3, 4)):  # shufflenet_v2
        taps["stem"] = ["maxpool"]
        taps["stages"] = ["stage2", "stage3", "stage4"]
    elif type(net).__name__ in ("ConvNeXt", "SwinTransformer"):  # features = [stem, stage, down, stage, ...]
        taps["stem"] = ["features.0"]
        taps["stages"] = [f"features.{i}" for i in range(1, len(net.features), 2)]
    last = _last_linear(net)
    if last is not None:
        taps["pooled"] = [f"{last}:input"]
        taps["classifier"] = [last]
    return taps


def _adapt_first_conv(net: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Rebuild the first 3-channel conv for ``in_channels`` (pretrained kernels: their channel mean, spread)."""
    for name, conv in net.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
            new = nn.Conv2d(
                in_channels,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
                conv.bias is not None,
                conv.padding_mode,
            )
            with torch.no_grad():
                if pretrained:  # as timm's adapt_input_conv: keeps the response to a grey image
                    mean = conv.weight.mean(dim=1, keepdim=True)
                    new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (3.0 / in_channels))
                    if conv.bias is not None:
                        new.bias.copy_(conv.bias)
                else:
                    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
                    if new.bias is not None:
                        nn.init.zeros_(new.bias)
            _set_module(net, name, new)
            return
    raise kdhub.ConfigError(f"cannot adapt {type(net).__name__} to {in_channels} input channels (no 3-channel conv)")


class TorchVision(kdhub.Model):
    """Any torchvision classification model (``torchvision:resnet18``, ``torchvision:convnext_tiny`` ...).

    Library: torchvision's model zoo (https://pytorch.org/vision/stable/models.html), built with
    ``torchvision.models.get_model(variant, weights=..., num_classes=..., **kwargs)``. ``weights``
    (``DEFAULT``, ``IMAGENET1K_V1`` ...) downloads ImageNet weights (needs network access or a filled
    torch hub cache); the classifier is then replaced by a new linear layer for the run's classes.
    Inputs with other than 3 channels get a new first conv (pretrained: the mean kernel, spread over
    the channels). GoogLeNet / Inception-v3 are built without auxiliary heads unless ``kwargs`` says
    otherwise; ``vit_*`` models get the run's ``image_size`` when not pretrained.

    Feature roles: ``pooled`` (the input of the last linear layer: the pooled vector, or VGG's and
    AlexNet's 4096-d hidden layer) and ``classifier``, for every model with a linear head (not
    SqueezeNet). ``stem`` and ``stages`` for resnet / resnext / wide_resnet (``maxpool``,
    ``layer1..4``), regnet (``stem``, ``trunk_output.block1..4``), shufflenet_v2 (``maxpool``,
    ``stage2..4``), convnext and swin (``features.0``; ``features.1, 3, 5, 7``, channels-last for
    swin). No ``preact_stages`` / ``bn_before_relu``: torchvision's ReLUs run in place (use the zoo's
    CIFAR models for OFD)::

        teacher: {name: torchvision:resnet18, options: {weights: DEFAULT}}
    """

    name = "torchvision"

    class Options(kdhub.Options):
        variant: str = Field(
            min_length=1,
            max_length=200,
            description="torchvision model name, e.g. 'resnet18' (from 'torchvision:resnet18')",
        )
        weights: str | None = Field(
            None,
            min_length=1,
            max_length=200,
            description="pretrained weights ('DEFAULT', 'IMAGENET1K_V1' ...; downloaded), None = random init",
        )
        kwargs: dict[str, Any] = Field(
            default_factory=dict, description="extra keyword arguments of the model builder (e.g. dropout)"
        )

        @field_validator("kwargs")
        @classmethod
        def _no_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
            clash = sorted(_RESERVED & set(value))
            if clash:
                raise ValueError(f"kwargs may not set {', '.join(clash)} (kdhub sets the classes; use 'weights')")
            return value

        @field_validator("variant")
        @classmethod
        def _known(cls, value: str) -> str:
            from torchvision import models

            available = models.list_models(module=models)
            if value not in available:
                close = difflib.get_close_matches(value, available, n=5, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"torchvision has no classification model {value!r}{hint}")
            return value

        @field_validator("weights")
        @classmethod
        def _known_weights(cls, value: str | None, info: ValidationInfo) -> str | None:
            from torchvision import models

            variant = info.data.get("variant")
            if value is not None and variant is not None:
                names = list(models.get_model_weights(variant).__members__)
                if value not in names:
                    raise ValueError(f"{variant} has no weights {value!r} (it has {', '.join(names)})")
            return value

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        o = self.options
        try:
            return self._create(num_classes, in_channels, image_size)
        except TypeError as err:
            if "unexpected keyword argument" in str(err):
                raise kdhub.ConfigError(
                    f"options.kwargs: torchvision model {o.variant!r} does not take {str(err).rsplit(' ', 1)[-1]}"
                ) from None
            raise
        except OSError as err:  # urllib's URLError: no network and no copy in the torch hub cache
            if o.weights is None:
                raise
            reason = getattr(err, "reason", None) or err
            raise kdhub.ConfigError(
                f"options.weights: cannot download torchvision's {o.weights} weights of {o.variant!r} ({reason}); "
                "set weights: null and give the teacher local weights (teacher.weights: path/to/weights.pt or "
                ".safetensors), or put the file in the torch hub cache ($TORCH_HOME/hub/checkpoints)"
            ) from None

    def _create(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        from torchvision import models

        o = self.options
        kwargs = dict(o.kwargs)
        aux = o.variant in ("googlenet", "inception_v3") and bool(kwargs.get("aux_logits", False))
        if o.variant in ("googlenet", "inception_v3") and not aux:
            # With aux heads, training returns a tuple of logits. Pretrained builders insist on loading
            # the aux heads (aux_logits=False is refused there), so they are dropped after loading.
            kwargs.pop("aux_logits", None)
            if o.weights is None:
                kwargs["aux_logits"] = False
        if o.variant.startswith("vit_") and o.weights is None:
            kwargs.setdefault("image_size", image_size)
        if o.weights is None:
            net = models.get_model(o.variant, weights=None, num_classes=num_classes, **kwargs)
        else:
            net = models.get_model(o.variant, weights=o.weights, **kwargs)
            head = _last_linear(net)
            if head is not None and net.get_submodule(head).out_features != num_classes:
                _set_module(net, head, nn.Linear(net.get_submodule(head).in_features, num_classes))
        if o.variant in ("googlenet", "inception_v3") and not aux and getattr(net, "aux_logits", False):
            net.aux_logits = False
            for name in ("aux1", "aux2", "AuxLogits"):
                if hasattr(net, name):
                    setattr(net, name, None)
        if in_channels != 3:
            _adapt_first_conv(net, in_channels, pretrained=o.weights is not None)
        return net

    def taps(self, net: nn.Module) -> dict[str, list[str]]:
        return torchvision_taps(net)
