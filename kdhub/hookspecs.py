"""The pluggy hook specifications of the ``kdhub`` entry-point group.

Register hooks receive a ``register`` callable; call it once per plugin class::

    @kdhub.hookimpl
    def kdhub_register_methods(register):
        register(MyMethod)

Lifecycle hooks observe runs; they may raise to abort a run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("kdhub")
hookimpl = pluggy.HookimplMarker("kdhub")

Register = Callable[[type], None]


@hookspec
def kdhub_register_methods(register: Register) -> None:
    """Register distillation methods (subclasses of ``kdhub.Method``)."""


@hookspec
def kdhub_register_policies(register: Register) -> None:
    """Register policies (subclasses of ``kdhub.Policy``)."""


@hookspec
def kdhub_register_metrics(register: Register) -> None:
    """Register metrics (subclasses of ``kdhub.Metric``)."""


@hookspec
def kdhub_register_models(register: Register) -> None:
    """Register model builders (subclasses of ``kdhub.Model``)."""


@hookspec
def kdhub_register_datasets(register: Register) -> None:
    """Register datasets (subclasses of ``kdhub.Dataset``)."""


@hookspec
def kdhub_register_commands(register: Register) -> None:
    """Register ``kdhub`` subcommands (subclasses of ``kdhub.Command``)."""


@hookspec
def kdhub_run_started(run: Any) -> None:
    """A run is about to train. ``run`` has ``config``, ``run_id`` and ``epoch`` (0, or the resumed epoch)."""


@hookspec
def kdhub_epoch_ended(run: Any, epoch: int, metrics: dict[str, float]) -> None:
    """An epoch ended (checkpoint written); ``metrics`` are the values logged for it."""


@hookspec
def kdhub_run_finished(run: Any, status: str, error: BaseException | None) -> None:
    """A run ended with ``status`` FINISHED, FAILED or KILLED."""


REGISTER_HOOKS: dict[str, str] = {
    "method": "kdhub_register_methods",
    "policy": "kdhub_register_policies",
    "metric": "kdhub_register_metrics",
    "model": "kdhub_register_models",
    "dataset": "kdhub_register_datasets",
    "command": "kdhub_register_commands",
}
