"""Any timm model as a kdhub model: ``timm:<model name>``, taps from timm's ``feature_info``."""

from __future__ import annotations

import difflib
import os
import pickle
import re
import socket
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from torch import nn

import kdhub

_RESERVED = {"num_classes", "in_chans", "pretrained"}


def module_name(net: nn.Module, module: nn.Module) -> str | None:
    """The qualified name of ``module`` inside ``net`` (None if it is not a submodule)."""
    for name, candidate in net.named_modules():
        if candidate is module:
            return name
    return None


def _family(name: str) -> str:
    """'layer1' -> 'layer', 'stages.0' -> 'stages', 'stem.conv3' -> 'stem'."""
    return re.sub(r"\d+$", "", name.split(".")[0])


def timm_taps(net: nn.Module) -> dict[str, list[str]]:
    """Roles of a timm model: ``stages`` from ``feature_info``, ``stem`` when it stands apart, pooled and classifier.

    A first ``feature_info`` entry from another module family than the following ones (ResNet's
    ``act1`` before ``layer1..4``, ByobNet's ``stem`` before ``stages.*``) is the stem; the rest are
    the stages. ``pooled`` is the input of ``get_classifier()``, which timm feeds with the pooled,
    flattened (and, for transformers, normalised) vector.
    """
    taps: dict[str, list[str]] = {}
    info = getattr(net, "feature_info", None)
    names: list[str] = []
    if info is not None:
        entries = info.get_dicts() if hasattr(info, "get_dicts") else info
        names = list(dict.fromkeys(e["module"] for e in entries if e.get("module")))
    if len(names) >= 3 and _family(names[0]) != _family(names[1]) == _family(names[2]):
        taps["stem"], names = [names[0]], names[1:]
    if names:
        taps["stages"] = names
    get_classifier = getattr(net, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    if isinstance(head, (tuple, list)):  # distilled heads (DeiT): the class-token head comes first
        head = head[0] if head else None
    name = module_name(net, head) if isinstance(head, nn.Module) and not isinstance(head, nn.Identity) else None
    if name:
        taps["pooled"] = [f"{name}:input"]
        taps["classifier"] = [name]
    return taps


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers (HF_HUB_OFFLINE=1: use the local cache, do not ask)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False"):
        return True
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host.split(":")[0], 443), timeout=timeout):
            return True
    except OSError:
        return False


class Timm(kdhub.Model):
    """Any model of the timm library (``timm:resnet18``, ``timm:convnext_atto`` ...), built for the run's data.

    Library: R. Wightman, "PyTorch Image Models" (https://github.com/huggingface/pytorch-image-models).
    ``timm.create_model(variant, pretrained, num_classes=..., in_chans=..., **kwargs)``; models that
    accept ``img_size`` (ViTs and other transformers) get the run's image size unless ``kwargs`` sets it.
    ``pretrained: true`` downloads weights from the Hugging Face hub, which needs network access
    (impossible on offline machines); timm adapts the first conv to ``in_chans`` and re-initialises the
    classifier for the run's number of classes.

    Feature roles: ``stages`` (the modules of timm's ``feature_info``, e.g. ``layer1..4``; transformer
    blocks give token tensors [B, N, D]), ``stem`` (when ``feature_info`` starts with a stem module, as
    ResNet's ``act1``), ``pooled`` (the input of ``get_classifier()``) and ``classifier``. No
    ``preact_stages`` / ``bn_before_relu``: timm's ReLUs run in place, so the pre-activations cannot be
    tapped (use the zoo's CIFAR models for OFD). Note that ImageNet models downsample 32x32 inputs to
    1x1 by the last stage::

        student: timm:resnet18
        teacher: {name: timm:convnext_atto, options: {kwargs: {drop_path_rate: 0.1}}}
    """

    name = "timm"

    class Options(kdhub.Options):
        variant: str = Field(
            min_length=1, max_length=300, description="timm model name, e.g. 'resnet18' (from 'timm:resnet18')"
        )
        pretrained: bool = Field(
            False,
            description="pretrained weights from the Hugging Face hub, or its local cache ($HF_HOME/hub; offline "
            "with HF_HUB_OFFLINE=1)",
        )
        pretrained_file: str | None = Field(
            None,
            min_length=1,
            max_length=4096,
            description="pretrained weights from a local file (.safetensors, .pth or .bin, as timm saves them or "
            "{'model': ...}); timm adapts the classifier and input channels",
        )
        distilled_training: bool = Field(
            False,
            description="distilled models (deit_*_distilled_*): return (class head, distillation head) in training "
            "so a method can teach the distillation head (evaluation averages them)",
        )
        kwargs: dict[str, Any] = Field(
            default_factory=dict, description="extra keyword arguments of timm.create_model (e.g. drop_rate)"
        )

        @field_validator("kwargs")
        @classmethod
        def _no_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
            clash = sorted(_RESERVED & set(value))
            if clash:
                raise ValueError(
                    f"kwargs may not set {', '.join(clash)} (kdhub sets the classes and channels; use 'pretrained')"
                )
            return value

        @field_validator("variant")
        @classmethod
        def _known(cls, value: str) -> str:
            import timm

            base = value.split(".")[0]  # 'resnet18.a1_in1k' names a pretrained tag of 'resnet18'
            if not value.startswith(("hf-hub:", "hf_hub:", "local-dir:")) and not timm.is_model(base):
                close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.7)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"timm has no model {value!r}{hint}")
            return value

    options: Options

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        o = self.options
        if o.pretrained and not _hub_reachable():
            raise kdhub.ConfigError(
                f"options.pretrained: timm's weights of {o.variant!r} come from huggingface.co, which this "
                "machine cannot reach; set pretrained: false and give the teacher local weights "
                "(teacher.weights: path/to/weights.safetensors or .pt), or fill the Hugging Face cache "
                "elsewhere and set HF_HUB_OFFLINE=1"
            )
        try:
            return self._create(num_classes, in_channels, image_size)
        except TypeError as err:
            if "unexpected keyword argument" in str(err):
                raise kdhub.ConfigError(
                    f"options.kwargs: timm model {o.variant!r} does not take {str(err).rsplit(' ', 1)[-1]}"
                ) from None
            raise
        except (pickle.UnpicklingError, OSError, RuntimeError, ValueError) as err:
            if o.pretrained_file is not None and (
                isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err)
            ):
                from kdhub.contract.unpickling import unpickling_problem  # never the advice to turn weights_only off

                raise kdhub.ConfigError(
                    f"options.pretrained_file: {o.pretrained_file}: {unpickling_problem(err)}; give a .safetensors"
                    " file or a state_dict of tensors"
                ) from None
            if not o.pretrained:
                raise
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise kdhub.ConfigError(
                f"options.pretrained: cannot load timm's pretrained weights of {o.variant!r} ({first}); set "
                "pretrained: false and give the teacher local weights (teacher.weights: path/to/weights)"
            ) from None

    def _create(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        import timm

        o = self.options
        kwargs = dict(o.kwargs, num_classes=num_classes, in_chans=in_channels)
        pretrained = o.pretrained or o.pretrained_file is not None
        if o.pretrained_file is not None:
            path = Path(o.pretrained_file).expanduser()
            if not path.is_file():
                raise kdhub.KdhubError(f"timm:{o.variant}: pretrained_file {path} does not exist")
            # timm reads the file itself (weights_only / safetensors) so that it can adapt it to the model
            kwargs["pretrained_cfg_overlay"] = {**kwargs.get("pretrained_cfg_overlay", {}), "file": str(path)}
        if "img_size" in kwargs:
            net = timm.create_model(o.variant, pretrained=pretrained, **kwargs)
        else:
            try:
                net = timm.create_model(o.variant, pretrained=pretrained, img_size=image_size, **kwargs)
            except TypeError as err:  # the model has no img_size argument: build it at its own (flexible) size
                if "img_size" not in str(err):
                    raise
                net = timm.create_model(o.variant, pretrained=pretrained, **kwargs)
        if o.distilled_training:
            if not hasattr(net, "set_distilled_training"):
                raise kdhub.ConfigError(
                    f"timm:{o.variant} has no distillation head (distilled_training needs e.g. "
                    "deit_tiny_distilled_patch16_224)"
                )
            net.set_distilled_training(True)  # type: ignore[operator]  # a timm model's method (checked above)
        return net

    def taps(self, net: nn.Module) -> dict[str, list[str]]:
        return timm_taps(net)
