"""Checkpoints: the resumable state of a run, and the trained network on its own.

One :class:`Checkpointer` per run writes every checkpoint: ``last.pt`` (everything needed to
resume, every ``checkpoint.resume_every`` epochs and at the end), ``epoch_XXX.pt`` (the student
alone, every ``checkpoint.every`` epochs), ``final.pt`` (the student at the end) and the best
student so far (by validation accuracy, or test accuracy without a validation split), kept in
the run's work folder and inside ``last.pt`` so that resuming keeps it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdhub.errors import IncompatibleError

__all__ = ["Checkpointer", "load", "load_weights", "rng_state", "save", "set_rng_state"]


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
    """Load a kdhub checkpoint (its ``model`` entry) or a bare state_dict into ``net``."""
    state = load(path)
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
