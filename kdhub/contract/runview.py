"""What lifecycle hooks see of a run: a small, read-only view."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdhub.contract.config import RunConfig

__all__ = ["RunView"]


@dataclass(frozen=True)
class RunView:
    """A run as the lifecycle hooks (``kdhub_run_started``, ``kdhub_epoch_ended``, ``kdhub_run_finished``) see it.

    ``epoch`` is the last finished epoch (0 before training, the checkpoint's epoch on resume);
    ``history`` holds the values logged for each finished epoch. ``config`` is a copy: changing
    it changes nothing. To stop a run from a hook, raise (``KeyboardInterrupt`` ends it KILLED,
    any other exception FAILED).
    """

    run_id: str | None
    config: RunConfig
    epoch: int
    epochs: int
    num_classes: int
    class_names: tuple[str, ...]
    history: tuple[Mapping[str, float], ...]
    rank: int = 0
    world_size: int = 1
    tracking_uri: str | None = None
