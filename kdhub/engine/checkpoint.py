"""Checkpoints: the resumable state of a run, and the trained network on its own."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdhub.errors import IncompatibleError

__all__ = ["load", "load_weights", "rng_state", "save", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(state: dict[str, Any], path: Path) -> Path:
    """Write atomically (a crash mid-write never leaves a broken checkpoint behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def load_weights(net: nn.Module, path: Path, who: str) -> dict[str, Any]:
    """Load a kdhub checkpoint (its ``model`` entry), a bare state_dict or a ``.safetensors`` file into ``net``."""
    state = _safetensors(path, who) if str(path).endswith(".safetensors") else load(path)
    weights = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(weights, dict):
        raise IncompatibleError(f"{who}: {path} holds no state_dict")
    weights = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in weights.items()}
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        first = "; ".join(lines[1:3] if len(lines) > 1 else lines)[:300]
        raise IncompatibleError(f"{who}: the weights in {path} do not fit the model ({first})") from None
    return state if isinstance(state, dict) else {}


def _safetensors(path: Path, who: str) -> dict[str, Any]:
    """The tensors of a safetensors file (a format that holds no code)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise IncompatibleError(f"{who}: {path} is not a readable safetensors file ({err})") from None
