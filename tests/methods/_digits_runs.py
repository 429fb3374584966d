"""Real tiny runs on digits for the method tests: one small trained teacher per test session."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdhub.contract.config_loading import parse_config
from kdhub.engine.loop import Trainer
from kdhub.engine.runner import run


@functools.cache
def digits_teacher() -> str:
    """Path of a 2-epoch ``cnn`` (width 16) teacher's weights on digits (trained once per session)."""
    result = run(
        {
            "seed": 1,
            "epochs": 2,
            "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
            "student": {"name": "cnn", "options": {"width": 16}},
            "schedule": {"name": "cosine"},
            "train": {"progress": False},
        },
        track=False,
    )
    folder = Path(tempfile.mkdtemp(prefix="kdhub-test-teacher-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "teacher.pt"
    torch.save(result.student.state_dict(), path)
    return str(path)


def digits_trainer(methods: list[dict[str, Any]], epochs: int = 2, **overrides: Any) -> Trainer:
    """An untracked trainer distilling the digits teacher into a ``cnn`` of width 8 (CE weight 1)."""
    config: dict[str, Any] = {
        "seed": 0,
        "epochs": epochs,
        "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
        "student": {"name": "cnn", "options": {"width": 8}},
        "teacher": {"name": "cnn", "options": {"width": 16}, "weights": digits_teacher()},
        "ce_weight": 1.0,
        "methods": methods,
        "optim": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "constant"},
        "train": {"progress": False},
        **overrides,
    }
    return Trainer(parse_config(config))


def logged(trainer: Trainer, key: str) -> list[float]:
    """The per-epoch values of one logged metric of an untracked trainer."""
    return [value for _, value in trainer.log.metric_history[key]]  # type: ignore[attr-defined]
