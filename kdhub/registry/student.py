"""A trained student on its own: the kdhub checkpoint format ``kdhub-student-1``.

A checkpoint holds the student's weights and its model spec (model plugin and options, classes,
input shape, normalisation), so the network is rebuilt through the model plugin and loaded with
``torch.load(weights_only=True)``. Runs write it (``final.pt``, the logged MLflow model);
``kdhub export`` and ``kdhub evaluate`` read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdhub.contract.errors import KdhubError
from kdhub.contract.unpickling import unpickling_problem
from kdhub.registry.loading import get_registry

__all__ = [
    "CHECKPOINT_FORMAT",
    "build_network",
    "load_checkpoint",
    "model_checkpoint",
    "network_from_checkpoint",
    "student_spec",
]

CHECKPOINT_FORMAT = "kdhub-student-1"


def student_spec(config: Any, data: Any) -> dict[str, Any]:
    """What rebuilding and feeding the student needs: model plugin and options, classes, input, normalisation."""
    options = get_registry().options("model", config.student.name, config.student.options, where="student.options")
    spec: dict[str, Any] = {
        "name": config.student.name,
        "options": options.model_dump(mode="json"),
        "num_classes": int(data.num_classes),
        "in_channels": int(data.in_channels),
        "image_size": int(data.image_size),
        "class_names": [str(c) for c in data.class_names],
        "dataset": config.data.name,
    }
    normalization = getattr(data, "normalization", None)  # DeviceData has it; other sources may not
    if normalization is not None:
        spec["normalization"] = normalization
    return spec


def _clean(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        k.removeprefix("module.").removeprefix("_orig_mod."): v.detach().cpu().contiguous() for k, v in state.items()
    }


def model_checkpoint(student: nn.Module, config: Any, data: Any) -> dict[str, Any]:
    """A kdhub checkpoint of the student alone (loads with ``torch.load(weights_only=True)``)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": _clean(student.state_dict()),
        "model_spec": student_spec(config, data),
        "epoch": int(config.epochs),
    }


def load_checkpoint(path: Path, label: str | None = None) -> dict[str, Any]:
    """A kdhub checkpoint (``model`` and ``model_spec``) read without executing pickled code."""
    label = label or str(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # never PyTorch's advice to load it with weights_only off
        raise KdhubError(
            f"{label}: not a loadable kdhub checkpoint ({unpickling_problem(err)}); kdhub reads tensors and plain"
            " values only: give a run id or a checkpoint kdhub wrote (a run's checkpoints/final.pt)"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or "model_spec" not in state:
        raise KdhubError(f"{label}: not a kdhub checkpoint (no 'model' and 'model_spec' entries)")
    problem = _spec_problem(state["model_spec"])
    if problem:
        raise KdhubError(f"{label}: not a kdhub checkpoint (its model_spec {problem})")
    return state


def _spec_problem(spec: Any) -> str | None:
    """What a checkpoint's ``model_spec`` lacks for rebuilding the network (None when it is complete)."""
    if not isinstance(spec, dict):
        return f"is a {type(spec).__name__}, not a dict"
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        return "names no model plugin ('name')"
    for key in ("num_classes", "in_channels", "image_size"):
        value = spec.get(key)
        present = key in spec or key == "num_classes"
        if present and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return f"has no valid {key!r} (an int >= 1, got {value!r:.40})"
    if not isinstance(spec.get("options", {}), dict):
        return "has options that are not a dict"
    return None


def build_network(spec: dict[str, Any], input_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """A fresh network from a model spec (the model plugin must be installed)."""
    if input_shape is None:
        if "in_channels" not in spec or "image_size" not in spec:
            raise KdhubError(
                "the checkpoint does not record its input shape (written by an older kdhub); give --input-shape C,H,W"
            )
        input_shape = (int(spec["in_channels"]), int(spec["image_size"]), int(spec["image_size"]))
    options = dict(spec.get("options") or {})
    # the checkpoint holds the weights: rebuilding the architecture must not download pretrained ones
    if options.get("pretrained"):
        options["pretrained"] = False
    if options.get("weights"):
        options["weights"] = None
    model: Any = get_registry().create("model", spec["name"], **options)
    return model.build(int(spec["num_classes"]), input_shape[0], input_shape[-1])


def network_from_checkpoint(
    checkpoint: dict[str, Any], label: str = "checkpoint", input_shape: tuple[int, int, int] | None = None
) -> nn.Module:
    """The checkpoint's network on the CPU in eval mode, its weights loaded."""
    net = build_network(checkpoint["model_spec"], input_shape)
    try:
        net.load_state_dict(_clean(checkpoint["model"]))
    except RuntimeError as err:
        first = "; ".join(line.strip() for line in str(err).splitlines()[1:3] if line.strip())[:300]
        raise KdhubError(f"{label}: the weights do not fit {checkpoint['model_spec']['name']} ({first})") from None
    return net.eval()
