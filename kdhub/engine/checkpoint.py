"""Checkpoints: the resumable state of a run, and the trained network on its own.

One :class:`Checkpointer` per run writes every checkpoint: ``last.pt`` (everything needed to
resume, every ``checkpoint.resume_every`` epochs and at the end), ``epoch_XXX.pt`` (the student
alone, every ``checkpoint.every`` epochs), ``final.pt`` (the student at the end) and the best
student so far (by validation accuracy, or test accuracy without a validation split), kept in
the run's work folder and inside ``last.pt`` so that resuming keeps it.

Every file is read without running pickled code: ``torch.load(weights_only=True)`` (tensors,
numbers, strings, lists, tuples and dicts only) or safetensors. kdhub's own checkpoints need
nothing else: random-number-generator states are stored as tensors and plain values. A file that
holds other pickled objects (code, in a hostile file) is refused with one line.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdhub.contract.errors import IncompatibleError, KdhubError
from kdhub.contract.unpickling import unpickling_problem

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "fit_problem",
    "load",
    "load_weights",
    "read_weights",
    "rng_state",
    "save",
    "set_rng_state",
    "to_cpu",
    "unpickling_problem",
]

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


def to_cpu(value: Any) -> Any:
    """The same nested dicts, lists and tuples with every tensor moved to the CPU (for gathering)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def save(state: dict[str, Any], path: Path) -> Path:
    """Write atomically (a crash mid-write never leaves a broken checkpoint behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def _legacy_numpy_globals() -> list[Any]:
    """NumPy's array reconstruction, for the RNG state of checkpoints written before kdhub 0.1's tensors."""
    core: Any = getattr(np, "_core", None) or getattr(np, "core")  # noqa: B009 - NumPy 2 (_core) or 1.x (core)
    multiarray = core.multiarray
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
        raise CheckpointError(f"{who}: {unpickling_problem(err)}; {advice}") from None
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


class Checkpointer:
    """Writes a run's checkpoints into ``folder`` and hands each file to ``publish`` (MLflow artifacts).

    ``model_spec`` (the student's plugin name, options and class count) goes into every file that
    holds the student, so a checkpoint says what network it is.
    """

    def __init__(
        self,
        folder: Path,
        model_spec: dict[str, Any],
        publish: Callable[[Path, str], None] | None = None,
    ) -> None:
        self.folder = folder
        self.model_spec = model_spec
        self.publish = publish
        self._best = folder / "best.pt"

    def _write(self, name: str, state: dict[str, Any], published: bool = True) -> Path:
        path = save(state, self.folder / name)
        if published and self.publish is not None:
            self.publish(path, "checkpoints")
        return path

    def _student(self, model: dict[str, Any], epoch: int) -> dict[str, Any]:
        return {"model": model, "epoch": epoch, "model_spec": self.model_spec}

    def save_last(self, state: dict[str, Any]) -> Path:
        """The resumable state (``checkpoints/last.pt``), with the best student inside."""
        return self._write("last.pt", {**state, "model_spec": self.model_spec, "best_state": self.best()})

    def save_epoch(self, epoch: int, model: dict[str, Any]) -> Path:
        """The student after ``epoch`` (``checkpoints/epoch_XXX.pt``): a teacher for later runs (ESKD)."""
        return self._write(f"epoch_{epoch:03d}.pt", self._student(model, epoch))

    def save_final(self, epoch: int, model: dict[str, Any]) -> Path:
        """The student at the end of the run (``checkpoints/final.pt``)."""
        return self._write("final.pt", self._student(model, epoch))

    def save_best(self, epoch: int, model: dict[str, Any], methods: list[dict[str, Any]]) -> None:
        """Keep the best student (and the methods' trainable parts) so far; not published on its own."""
        self._write("best.pt", {**self._student(model, epoch), "methods": methods}, published=False)

    def best(self) -> dict[str, Any] | None:
        """The best state kept by :meth:`save_best` (None before the first)."""
        return load(self._best) if self._best.exists() else None

    def restore_best(self, student: nn.Module, methods: list[nn.Module]) -> int | None:
        """Load the best student (and methods' parts) kept so far into the run; its epoch, or None if none yet."""
        state = self.best()
        if state is None:
            return None
        student.load_state_dict(state["model"])
        for method, method_state in zip(methods, state["methods"], strict=True):
            method.load_state_dict(method_state)
        return int(state["epoch"])

    def keep_best(self, state: dict[str, Any] | None) -> None:
        """Put back the best state that a resumed ``last.pt`` carried."""
        if state is not None:
            self._write("best.pt", state, published=False)
