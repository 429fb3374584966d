"""Checkpoints: the resumable state of a run, and the trained network on its own.

Every file is read without running pickled code: ``torch.load(weights_only=True)`` (tensors,
numbers, strings, lists, tuples and dicts only) or safetensors. kdhub's own checkpoints need
nothing else: random-number-generator states are stored as tensors and plain values. A file that
holds other pickled objects (code, in a hostile file) is refused with one line.
"""

from __future__ import annotations

import contextlib
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdhub.errors import IncompatibleError, KdhubError

__all__ = ["CheckpointError", "load", "load_weights", "read_weights", "rng_state", "save", "set_rng_state"]

_SAFETENSORS_SUFFIX = ".safetensors"


class CheckpointError(KdhubError):
    """A checkpoint or weights file that cannot be read safely (corrupt, truncated, foreign or hostile)."""


def rng_state() -> dict[str, Any]:
    """The RNG states of torch, Python and NumPy as tensors and plain values (safe to load)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        np.random.set_state(
            {
                "bit_generator": numpy["bit_generator"],
                "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
                "has_gauss": numpy["has_gauss"],
                "gauss": numpy["gauss"],
            }
        )
    else:  # checkpoints written before RNG states were stored as tensors
        np.random.set_state(numpy)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(state: dict[str, Any], path: Path) -> Path:
    """Write atomically (a crash mid-write never leaves a broken checkpoint behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def _legacy_numpy_globals() -> list[Any]:
    """NumPy's array reconstruction, for the RNG state of checkpoints written before kdhub 0.1's tensors."""
    try:
        multiarray = np._core.multiarray  # type: ignore[attr-defined]
    except AttributeError:  # NumPy 1.x
        multiarray = np.core.multiarray
    return [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _allowed_globals() -> contextlib.AbstractContextManager[Any]:
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals(_legacy_numpy_globals()) if safe_globals is not None else contextlib.nullcontext()


def _check_file(path: Path, who: str) -> None:
    try:
        if not path.exists():
            raise CheckpointError(f"{who}: no such file")
        if path.is_dir():
            raise CheckpointError(f"{who}: is a folder, not a checkpoint file")
        if not path.is_file():
            raise CheckpointError(f"{who}: is not a regular file (a device or a pipe?)")
        if path.stat().st_size == 0:
            raise CheckpointError(f"{who}: the file is empty")
    except OSError as err:
        raise CheckpointError(f"{who}: cannot read it: {err.strerror or err}") from None


def _why(err: Exception) -> str:
    """The informative part of torch.load's error (its weights-only advice is not for kdhub users)."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"refused: it holds pickled objects ({found.group(1)}), which could run code when loaded"
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = found.group(1).split("Check the documentation")[0].strip() if found else text.strip().splitlines()[0]
    return f"not a PyTorch checkpoint, or truncated or corrupt ({type(err).__name__}: {detail[:160]})"


_WHAT_TO_DO = (
    "kdhub reads tensors only: save a state_dict (torch.save(model.state_dict(), 'weights.pt')) or a .safetensors file"
)


_RESUME_ADVICE = "the checkpoint cannot be used: start the run again without --resume"


def load(path: Path, who: str | None = None, *, advice: str = _RESUME_ADVICE) -> dict[str, Any]:
    """A kdhub checkpoint (or any file of tensors) read without running pickled code.

    ``who`` names the file in errors (default: its path); every failure is a one-line CheckpointError
    ending with ``advice`` (what to do).
    """
    path = Path(path)
    who = who or str(path)
    _check_file(path, who)
    try:
        with _allowed_globals():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{who}: {_why(err)}; {advice}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{who}: holds a {type(state).__name__}, not a checkpoint or a state_dict")
    return state


def _is_safetensors(path: Path) -> bool:
    if path.suffix == _SAFETENSORS_SUFFIX:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    return len(head) == 9 and int.from_bytes(head[:8], "little") < 100_000_000 and head[8:9] == b"{"


def read_weights(path: Path, who: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, whole checkpoint) of a kdhub checkpoint, a bare state_dict or a safetensors file."""
    path = Path(path)
    _check_file(path, who)
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            weights: Any = load_file(str(path), device="cpu")
        except Exception as err:
            raise CheckpointError(
                f"{who}: not a readable safetensors file ({type(err).__name__}: {str(err)[:160]})"
            ) from None
        return dict(weights), {}
    state = load(path, who, advice=_WHAT_TO_DO)
    weights = state["model"] if isinstance(state.get("model"), dict) else state
    tensors = {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    if not tensors or len(tensors) != len(weights) or not all(isinstance(k, str) for k in weights):
        raise IncompatibleError(
            f"{who}: holds no state_dict (expected a mapping of parameter names to tensors, or a kdhub "
            "checkpoint with one under 'model')"
        )
    return tensors, state


def load_weights(net: nn.Module, path: Path, who: str) -> dict[str, Any]:
    """Load a kdhub checkpoint (its ``model`` entry), a bare state_dict or a safetensors file into ``net``."""
    weights, state = read_weights(path, who)
    weights = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in weights.items()}
    problem = fit_problem(net, weights)
    if problem:
        raise IncompatibleError(f"{who}: the weights do not fit the {type(net).__name__} built here: {problem}")
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        first = "; ".join(lines[1:3] if len(lines) > 1 else lines)[:300]
        raise IncompatibleError(f"{who}: the weights do not fit the model ({first})") from None
    return state


def fit_problem(net: nn.Module, weights: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``weights`` from loading into ``net`` (missing / unexpected keys, shapes), in one line."""
    expected = net.state_dict()

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' if len(missing) > 1 else ''} ({few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key{'s' if len(unexpected) > 1 else ''} ({few(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch{'es' if len(shapes) > 1 else ''} ({few(shapes)})")
    if not parts:
        return None
    return "; ".join(parts) + " (saved from another model, options or number of classes?)"
