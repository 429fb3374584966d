"""The pluggy hook specifications of the ``kdhub`` entry-point group.

Register hooks receive a ``register`` callable; call it once per plugin class::

    @kdhub.hookimpl
    def kdhub_register_methods(register):
        register(MyMethod)

Lifecycle hooks observe runs through a read-only :class:`kdhub.RunView`; they may raise to stop a
run (``KeyboardInterrupt``: KILLED, anything else: FAILED).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from kdhub.contract.runview import RunView

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
def kdhub_run_started(run: RunView) -> None:
    """A run is about to train; ``run.epoch`` is 0, or the epoch a resumed run continues after."""


@hookspec
def kdhub_epoch_ended(run: RunView, epoch: int, metrics: dict[str, float]) -> None:
    """An epoch ended: its checkpoint is written and ``metrics`` (the values logged for it) are in MLflow."""


@hookspec
def kdhub_run_finished(run: RunView, status: str, error: BaseException | None) -> None:
    """A run ended with ``status`` FINISHED, FAILED or KILLED (``error`` says why)."""


REGISTER_HOOKS: dict[str, str] = {
    "method": "kdhub_register_methods",
    "policy": "kdhub_register_policies",
    "metric": "kdhub_register_metrics",
    "model": "kdhub_register_models",
    "dataset": "kdhub_register_datasets",
    "command": "kdhub_register_commands",
}
