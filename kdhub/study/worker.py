"""One run of a study, executed in the study's process (local executor) or in a Ray worker.

:func:`execute` never raises for a run that fails: it returns an :class:`Outcome` with the reason,
so one failing run does not stop the others (Ctrl-C still does). A search trial reports its
objective to Optuna after every epoch through the public lifecycle hook ``kdhub_epoch_ended`` and
is pruned by raising from it; the pruned run then ends KILLED in MLflow with the tag
``kdhub.state = PRUNED`` and the reason in ``kdhub.pruned`` (no ``kdhub.failure`` tag).
"""

from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from kdhub.contract.errors import KdhubError
from kdhub.contract.hookspecs import hookimpl
from kdhub.engine.runner import run
from kdhub.registry import loading as plugins
from kdhub.study.storage import open_storage, pruner
from kdhub.tracking import Tracker, set_run_state

__all__ = ["KEY_TAG", "Outcome", "RunPruned", "RunTask", "TrialLink", "execute"]

KEY_TAG = "kdhub.study.key"  # the tag that tells the watcher which run is the task's
PRUNED = "PRUNED"


@dataclass
class TrialLink:
    """How a trial's run reaches its Optuna trial (a storage both the study and the worker open)."""

    storage: str
    study_name: str
    trial_id: int
    number: int
    objective: str
    direction: str
    reduce: str
    prune: bool
    startup_trials: int
    warmup_epochs: int


@dataclass
class RunTask:
    key: str
    display: str
    config: dict[str, Any]
    resume_run_id: str | None = None
    threads: int | None = None  # torch threads in the run (Ray: the run's cpus)
    cwd: str | None = None  # the study's working directory (relative data paths), where it exists
    trial: TrialLink | None = None
    params: dict[str, Any] = field(default_factory=dict)  # logged as params (a trial's sampled values)
    worker: bool = False  # executed in a worker process of the executor (not the study's process)


@dataclass
class Outcome:
    key: str
    status: str  # FINISHED, FAILED or PRUNED
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    value: float | None = None  # a trial's objective
    error: str | None = None  # one line
    input_error: bool = False  # the failure is bad input (a KdhubError), not a crash
    detail: str = ""  # traceback of a crash
    seconds: float = 0.0
    epochs: int = 0  # last epoch completed


class RunPruned(Exception):
    """Raised from the epoch hook to stop a trial the pruner gave up on."""


@dataclass
class _Current:
    task: RunTask
    run_id: str | None = None
    epochs: int = 0
    values: dict[int, float] = field(default_factory=dict)
    pruned: str | None = None
    trial: Any = None


class _Watcher:
    """Lifecycle hooks, registered once per process, acting for the task being executed."""

    def __init__(self) -> None:
        self.current: _Current | None = None

    def _mine(self, run: Any) -> _Current | None:
        current = self.current
        if current is None or run.config.tracking.tags.get(KEY_TAG) != current.task.key:
            return None
        return current

    @hookimpl
    def kdhub_run_started(self, run: Any) -> None:
        current = self._mine(run)
        if current is None:
            return
        current.run_id = run.run_id
        if current.task.params and run.run_id is not None:
            tracker = Tracker(run.config.tracking.uri, run.config.tracking.experiment)
            tracker.run_id = run.run_id
            tracker.params({f"trial.{k}": v for k, v in current.task.params.items()})
        if current.trial is not None and run.run_id is not None:
            current.trial.set_user_attr("mlflow_run_id", run.run_id)

    @hookimpl
    def kdhub_epoch_ended(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        current = self._mine(run)
        if current is None:
            return
        current.epochs = epoch
        link = current.task.trial
        if link is None or link.objective not in metrics:
            return
        value = float(metrics[link.objective])
        current.values[epoch] = value
        if current.trial is None or not math.isfinite(value):
            return
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resumed trial reports its resumed epoch again
            current.trial.report(value, epoch)
        if link.prune and current.trial.should_prune():
            current.pruned = (
                f"pruned by the median pruner after epoch {epoch} ({link.objective} {value:.4g} below the median "
                "of the earlier trials at that epoch)"
            )
            raise RunPruned(current.pruned)


_watcher = _Watcher()
_registered_for: Any = None


def _watch() -> None:
    """Register the watcher's hooks in this process (again after ``plugins.reset()``)."""
    global _registered_for

    registry = plugins.get_registry()
    if _registered_for is not registry:
        plugins.register_module(_watcher, name="kdhub.study", distribution="kdhub.study")
        _registered_for = registry


def _open_trial(link: TrialLink) -> Any:
    import optuna

    study = optuna.load_study(
        study_name=link.study_name,
        storage=open_storage(link.storage),
        pruner=pruner(link.prune, link.startup_trials, link.warmup_epochs),
    )
    return optuna.trial.Trial(study, link.trial_id)


def _interruptible() -> None:
    """Let the executor stop this run with a KeyboardInterrupt (Ray's cancel), even where SIGINT was ignored.

    A study started in the background (``cmd &``, nohup) ignores SIGINT, and its Ray workers inherit
    that: Ray's cancel then cannot interrupt a run, which would train on until Ray is shut down.
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


ERROR_CHARS = 400
"""How much of a failed run's error the study's progress line and summary show (the run's traceback keeps it all)."""


def _one_line(err: BaseException) -> str:
    text = str(err) if isinstance(err, KdhubError) else f"{type(err).__name__}: {err}"
    text = " ".join(text.split())
    if " [SQL: " in text:  # SQLAlchemy's statement and parameters: kilobytes that say nothing to the reader
        text = text.split(" [SQL: ")[0]
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def execute(task: RunTask) -> Outcome:
    """Train the task's run and report how it ended."""
    start = time.perf_counter()
    if task.cwd and os.path.isdir(task.cwd):
        os.chdir(task.cwd)
    if task.threads:  # a worker process of its own: the run's threads whatever the user's environment says
        os.environ["KDHUB_THREADS"] = str(task.threads)
    if task.worker:
        _interruptible()
    current = _Current(task)
    outcome = Outcome(task.key, "FAILED")
    try:
        _watch()
        if task.trial is not None:
            current.trial = _open_trial(task.trial)
        _watcher.current = current

        result = run(task.config, resume_run_id=task.resume_run_id)
        outcome.status, outcome.run_id = "FINISHED", result.run_id
        outcome.metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
        outcome.metrics.setdefault("test/acc_max_seen", float(result.best_acc))
        outcome.metrics.setdefault("test/acc_last", float(result.last_acc))
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        outcome.run_id = current.run_id
        if current.pruned is not None:  # whatever the engine wrapped it in
            outcome.status, outcome.error = PRUNED, current.pruned
            if current.run_id is not None:
                set_run_state(
                    task.config["tracking"]["uri"],
                    current.run_id,
                    "KILLED",
                    {"kdhub.state": PRUNED, "kdhub.pruned": current.pruned},
                    remove=["kdhub.failure"],
                )
        else:
            outcome.error, outcome.input_error = _one_line(err), isinstance(err, KdhubError)
            if not outcome.input_error:
                outcome.detail = traceback.format_exc()
    finally:
        _watcher.current = None
        if task.worker:
            _release_device_memory()
    outcome.epochs = current.epochs
    outcome.run_id = outcome.run_id or current.run_id
    if task.trial is not None and outcome.status != "FAILED":
        _objective(task.trial, current, outcome)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _release_device_memory() -> None:
    """In a worker that goes on to the next run: give the GPU memory the run's tensors held back to the device.

    A worker process executes several runs (the executor reuses it); the allocator's cache of a finished
    run would otherwise stay reserved for this process while other workers share the GPU.
    """
    import gc
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()  # the run's modules and optimizer state may sit in reference cycles
        torch.cuda.empty_cache()


def _objective(link: TrialLink, current: _Current, outcome: Outcome) -> None:
    values = dict(current.values)
    if current.trial is not None:  # a resumed trial reported its earlier epochs before the interruption
        trials = current.trial.study.get_trials(deepcopy=False)
        stored = next(t for t in trials if t.number == link.number).intermediate_values
        values = {**{int(k): v for k, v in stored.items()}, **values}
    finite = {e: v for e, v in values.items() if math.isfinite(v)}
    if not finite and link.objective in outcome.metrics:
        finite = {outcome.epochs: outcome.metrics[link.objective]}
    if not finite:
        if outcome.status == "FINISHED":
            logged = ", ".join(sorted(k for k in outcome.metrics if "/" in k)[:8])
            outcome.status = "FAILED"
            outcome.error = (
                f"search.objective: the run logged no finite {link.objective!r} at any epoch "
                f"(its metrics include {logged}); choose a metric logged every epoch"
            )
            outcome.input_error = True
        return
    outcome.value = reduce_values(finite, link.reduce, link.direction)


def reduce_values(values: dict[int, float], reduce: str, direction: str) -> float | None:
    """A trial's value from its per-epoch objective: the last epoch's, or the best epoch's."""
    finite = {e: v for e, v in values.items() if math.isfinite(v)}
    if not finite:
        return None
    if reduce == "last":
        return finite[max(finite)]
    return (max if direction == "maximize" else min)(finite.values())
