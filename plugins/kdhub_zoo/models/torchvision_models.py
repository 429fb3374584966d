"""Any torchvision classification model as a kdhub model: ``torchvision:<name>``."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn

import kdhub
from kdhub.engine.checkpoint import load_weights

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
        taps["stages"] = [f"trunk_output.{name}" for name, _ in children["trunk_output"].named_children()]
    elif all(f"stage{i}" in children for i in (2, 3, 4)):  # shufflenet_v2
        taps["stem"] = ["maxpool"]
        taps["stages"] = ["stage2", "stage3", "stage4"]
    elif type(net).__name__ in ("ConvNeXt", "SwinTransformer"):  # features = [stem, stage, down, stage, ...]
        taps["stem"] = ["features.0"]
        taps["stages"] = [f"features.{i}" for i in range(1, len(list(children["features"].children())), 2)]
    last = _last_linear(net)
    if last is not None:
        taps["pooled"] = [f"{last}:input"]
        taps["classifier"] = [last]
    return taps


def cached_weights(url: str, who: str) -> Path:
    """torch hub's cached copy of ``url`` (``$TORCH_HOME/hub/checkpoints/<file name>``), downloaded if missing.

    Offline machines put the file there (the name is the last part of the URL, e.g.
    ``resnet18-f37072fd.pth``); the hash in the name is checked on download, as torchvision does.
    """
    import torch.hub

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / os.path.basename(url)
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        torch.hub.download_url_to_file(url, str(path), match.group(1) if match else None, progress=False)
    except Exception as err:  # no network, proxy, HTTP or hash errors all mean the same to the user
        raise kdhub.KdhubError(
            f"{who}: {path.name} is not in torch hub's cache ({folder}) and cannot be downloaded "
            f"({type(err).__name__}); copy it there, or give options.weights_file"
        ) from None
    return path


def _adapt_first_conv(net: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Rebuild the first 3-channel conv for ``in_channels`` (pretrained kernels: their channel mean, spread)."""
    for name, conv in net.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
            layout: dict[str, Any] = {
                "kernel_size": conv.kernel_size,
                "stride": conv.stride,
                "padding": conv.padding,
                "dilation": conv.dilation,
            }
            new = nn.Conv2d(
                in_channels,
                conv.out_channels,
                **layout,
                groups=conv.groups,
                bias=conv.bias is not None,
                padding_mode=conv.padding_mode,
            )
            with torch.no_grad():
                if pretrained:  # as timm's adapt_input_conv: keeps the response to a grey image
                    mean = conv.weight.mean(dim=1, keepdim=True)
                    new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (3.0 / in_channels))
                    if conv.bias is not None and new.bias is not None:
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
            description="pretrained weights by name ('DEFAULT', 'IMAGENET1K_V1' ...), read from torch hub's cache "
            "($TORCH_HOME/hub/checkpoints) and downloaded only when missing; None = random init",
        )
        weights_file: str | None = Field(
            None,
            min_length=1,
            max_length=4096,
            description="a local weights file (.pth state dict, kdhub checkpoint or .safetensors) to start from",
        )
        weights_classes: int = Field(
            1000, ge=1, le=1_000_000, description="classes of the head stored in weights_file (replaced if different)"
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
                    close = difflib.get_close_matches(value, names, n=3, cutoff=0.5)
                    hint = f"did you mean {', '.join(close)}?" if close else f"it has {', '.join(names)}"
                    raise ValueError(f"{variant} has no weights {value!r}; {hint}")
            return value

        @model_validator(mode="after")
        def _one_source(self) -> Any:
            if self.weights is not None and self.weights_file is not None:
                raise ValueError("give weights (by name) or weights_file, not both")
            return self

    options: Options

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
        pretrained = o.weights is not None or o.weights_file is not None
        aux = o.variant in ("googlenet", "inception_v3") and bool(kwargs.get("aux_logits", False))
        if o.variant in ("googlenet", "inception_v3"):
            # With aux heads, training returns a tuple of logits. Pretrained files hold the aux heads,
            # so they are built to load them and dropped afterwards unless asked for.
            kwargs.pop("aux_logits", None)
            kwargs["aux_logits"] = aux or pretrained
            if pretrained:
                kwargs.setdefault("transform_input", True)
                kwargs["init_weights"] = False
        if not pretrained:
            if o.variant.startswith("vit_"):
                kwargs.setdefault("image_size", image_size)
            net = models.get_model(o.variant, weights=None, num_classes=num_classes, **kwargs)
        else:
            net = self._pretrained(models, kwargs)
            head = _last_linear(net)
            linear = net.get_submodule(head) if head is not None else None
            if head is not None and isinstance(linear, nn.Linear) and linear.out_features != num_classes:
                _set_module(net, head, nn.Linear(linear.in_features, num_classes))
        if o.variant in ("googlenet", "inception_v3") and not aux and getattr(net, "aux_logits", False):
            net.aux_logits = False
            for name in ("aux1", "aux2", "AuxLogits"):
                if hasattr(net, name):
                    setattr(net, name, None)
        if in_channels != 3:
            _adapt_first_conv(net, in_channels, pretrained=pretrained)
        return net

    def _pretrained(self, models: Any, kwargs: dict[str, Any]) -> nn.Module:
        """The net built as torchvision builds it for its weights, loaded from a local file (no pickled code).

        ``weights_file`` is used as given; named ``weights`` come from torch hub's cache
        (``$TORCH_HOME/hub/checkpoints/<file>``, the file torchvision itself would download), which is
        downloaded only when missing.
        """
        o = self.options
        who = f"torchvision:{o.variant}"
        num_classes = o.weights_classes
        if o.weights is not None:
            weights = self._weights_enum(models)
            num_classes = len(weights.meta["categories"])
            if o.variant.startswith("vit_"):
                kwargs["image_size"] = weights.meta["min_size"][0]
            elif o.variant == "maxvit_t":
                kwargs["input_size"] = weights.meta["min_size"]
            path = cached_weights(weights.url, who)
        else:
            assert o.weights_file is not None  # reached only with weights or weights_file given
            path = Path(o.weights_file).expanduser()
            if not path.is_file():
                raise kdhub.KdhubError(f"{who}: weights_file {path} does not exist")
        net = models.get_model(o.variant, weights=None, num_classes=num_classes, **kwargs)
        load_weights(net, path, f"{who} weights")
        return net

    def _weights_enum(self, models: Any) -> Any:
        o = self.options
        try:
            enum = models.get_model_weights(o.variant)
        except ValueError:
            raise kdhub.ConfigError(f"torchvision model {o.variant!r} has no pretrained weights") from None
        names = [w.name for w in enum]
        if o.weights == "DEFAULT":
            return enum.DEFAULT
        if o.weights not in names:
            close = difflib.get_close_matches(o.weights, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f" (it has: {', '.join(names)}, DEFAULT)"
            raise kdhub.ConfigError(f"torchvision:{o.variant} has no weights {o.weights!r}{hint}")
        return enum[o.weights]

    def taps(self, net: nn.Module) -> dict[str, list[str]]:
        return torchvision_taps(net)
