"""Running one run: MLflow around the :class:`~kdhub.engine.loop.Trainer`, resume rules, SIGTERM.

``run(config)`` builds the trainer, starts (or resumes) the MLflow run, trains, logs the student,
and ends the run FINISHED, FAILED (with the reason) or KILLED (with the command that resumes it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from kdhub.contract.config import RunConfig
from kdhub.contract.config_loading import check_resume, dump_config, parse_config
from kdhub.contract.errors import DivergedError, KdhubError, Terminated
from kdhub.engine import checkpoint
from kdhub.engine.loop import RunResult, Trainer
from kdhub.registry import loading as plugins
from kdhub.tracking import (
    Tracker,
    artifact_exists,
    check_resumable,
    default_run_name,
    liveness,
    load_run_config,
    log_run_end,
    log_run_start,
    run_info,
    run_params,
    run_tags,
)

__all__ = ["run"]


def run(
    config: RunConfig | dict[str, Any], resume_run_id: str | None = None, track: bool = True, announce: bool = False
) -> RunResult:
    """Train one run from a config (a RunConfig or a dict), logging it to MLflow unless ``track`` is False.

    With ``resume_run_id``, the run's ``checkpoints/last.pt`` is loaded and training continues into
    the same MLflow run; a run stopped before its first checkpoint starts again from scratch in it.
    A FINISHED run, or one whose process is still alive (its heartbeat is fresh), is not resumed.
    SIGTERM stops a run as Ctrl-C does: KILLED, with the command that resumes it (a SIGTERM that
    arrives once the run is FINISHED changes nothing). With ``announce``, the run's id (and its page
    on a tracking server) is printed as soon as it is created.
    """
    if isinstance(config, dict):
        config = parse_config(config)

    rank0 = int(os.environ.get("RANK", "0")) == 0
    tracker = Tracker(config.tracking.uri, config.tracking.experiment) if track and rank0 else None
    checkpoint_path = None
    if resume_run_id is not None:
        uri = tracker.uri if tracker is not None else config.tracking.uri
        checkpoint_path = _resumable(config, resume_run_id, uri, check_alive=rank0)
    with _sigterm_interrupts() as ending, Trainer(config, tracker, resume_run_id) as trainer:
        if checkpoint_path is not None:
            where = f"--resume {resume_run_id}"
            path = trainer.fetch(f"runs:/{resume_run_id}/{checkpoint_path}", where)
            trainer.load_state_dict(checkpoint.load(path, f"{where}: {checkpoint_path}"))

        def start() -> None:
            assert tracker is not None
            trainer.run_id = tracker.start(
                config.tracking.run_name or default_run_name(config),
                run_tags(config),
                resume_run_id,
                view_columns=trainer.view_columns(),
            )
            if announce:
                from kdhub.tracking.failures import run_started_line

                print(run_started_line(tracker, resume_run_id is not None), flush=True)
            tracker.beat()
            if resume_run_id is None:
                params = run_params(config, trainer.options, device=str(trainer.device))
                tracker.params({**params, "threads": str(trainer.threads)})
                tracker.text("config.yaml", dump_config(config))
            else:
                trainer.logged = tracker.logged_steps()
            log_run_start(tracker, config, trainer.data)

        def end(result: RunResult) -> None:
            assert tracker is not None
            log_run_end(tracker, config, trainer.data, result)

        return _fit(trainer, tracker, start, end, ending)


def _resumable(config: RunConfig, run_id: str, uri: str | None, check_alive: bool = True) -> str | None:
    """The checkpoint a run resumes from (None: from scratch); refuses a finished or still running run,
    and a config that changes more than the resumable keys."""
    path = "checkpoints/last.pt"
    if not check_alive:  # torchrun's other processes: rank 0 decides, and marks the run RUNNING
        return path if artifact_exists(run_id, path, uri) else None
    check_resumable(run_id, uri)  # exists, not deleted, not FINISHED
    check_resume(config, load_run_config(run_id, uri), run_id)
    info = run_info(run_id, uri)
    if info["status"] == "RUNNING":
        alive, why = liveness(info)
        if alive:
            raise KdhubError(f"--resume {run_id}: the run is still running ({why}); stop that process first")
    return path if artifact_exists(run_id, path, uri) else None


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[threading.Event]:
    """Turn SIGTERM into :class:`kdhub.errors.Terminated` (a KeyboardInterrupt) while a run trains.

    Yields an event to set once the run is FINISHED: a SIGTERM after that is ignored (the process
    is ending anyway; a finished run must not be reported as killed).
    """
    finished = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield finished
        return

    def stop(signum: int, frame: Any) -> None:
        if finished.is_set():
            return
        if hasattr(signal, "SIGCHLD"):
            # A scheduler's SIGTERM reaches the whole process group, DataLoader workers included; torch's
            # SIGCHLD handler would raise on their deaths while the run is being marked KILLED. The process
            # is ending: worker deaths are expected from here on (a no-op handler, not SIG_DFL, so a
            # SIGCHLD already pending does not raise "ignored due to race condition").
            signal.signal(signal.SIGCHLD, _expected_child_exit)
        raise Terminated("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield finished
    finally:
        signal.signal(signal.SIGTERM, previous)


def _expected_child_exit(signum: int, frame: Any) -> None:
    """SIGCHLD after SIGTERM: a worker of this process ended as the whole job is stopped."""


_BARE_REASONS: dict[type[BaseException], str] = {KeyboardInterrupt: "interrupted (Ctrl-C or SIGINT)"}


def _fit(
    trainer: Trainer,
    tracker: Any,
    start: Callable[[], None],
    end: Callable[[RunResult], None],
    finished: threading.Event | None = None,
) -> RunResult:
    """Train, with the MLflow run started before (``start``) and the student logged after (``end``).

    When it fails, the run is marked FAILED or KILLED without ever raising over the error that
    ended it; a failure of the tracking store itself becomes one :class:`StoreFailure` line.
    """
    from kdhub.tracking.failures import finish_guarded, resume_command, store_cause, store_failure

    try:
        if tracker is not None:
            start()
        result = trainer.fit()
        if tracker is not None:
            end(result)
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        cause = store_cause(err, tracker.uri) if tracker is not None else None
        recorded = False
        if tracker is not None and trainer.run_id is not None:
            reason = f"{type(err).__name__}: {str(err) or _BARE_REASONS.get(type(err), 'no message')}"
            if cause is not None:
                reason = f"the tracking store failed: {cause}"
            if not isinstance(err, DivergedError):
                reason += f" (resume with: {resume_command(trainer.run_id, tracker.uri)})"
            recorded = finish_guarded(tracker, status, reason)
        # the CLI's line names the run and its resume command (a study's runs resume with the study)
        in_study = "kdhub.study" in trainer.config.tracking.tags
        if isinstance(err, KeyboardInterrupt) and trainer.run_id is not None and tracker is not None and not in_study:
            err.kdhub_resume = (trainer.run_id, resume_command(trainer.run_id, tracker.uri))  # type: ignore[attr-defined]
        plugins.notify("run_finished", run=trainer.view(), status=status, error=err)
        if cause is not None and tracker is not None:
            raise store_failure(cause, tracker.uri, trainer.run_id, recorded) from err
        raise
    if finished is not None:  # trained and logged: a SIGTERM from here on does not make it KILLED
        finished.set()
    if tracker is not None:
        tracker.finish("FINISHED")
    plugins.notify("run_finished", run=trainer.view(), status="FINISHED", error=None)
    return result
