"""When the tracking store fails during a run: the cause in words, and bookkeeping that never hides it.

A store can fail under a running run: its disk fills up, its SQLite file is moved or deleted, it
becomes read-only, its server goes away. The run's data is safe (its checkpoints are written
atomically), but the error MLflow raises is a chained SQL dump, and writing the run's failure to
the same broken store raises again over it. :func:`store_cause` says what went wrong in words,
:func:`finish_guarded` ends the run without ever raising, and :func:`store_failure` is the one line
the user reads: the store, the cause, the run and the command that resumes it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from kdhub.contract.errors import RunFailedError
from kdhub.tracking.store import DEFAULT_URI, _sqlite_path

__all__ = [
    "StoreFailure",
    "copy_atomically",
    "finish_guarded",
    "interrupted_line",
    "local_artifact_folder",
    "quiet_store_logs",
    "resume_command",
    "run_started_line",
    "store_cause",
    "store_failure",
]

RETRY_SECONDS = 0.5
"""Pause before the one retry of a run's final bookkeeping (a store that was briefly locked or busy)."""


class StoreFailure(RunFailedError):
    """The tracking store failed under a running run; the message names the store, the cause and the resume command."""


_ERRNO_CAUSES = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EIO: "input/output error",
}
# what SQLite, SQLAlchemy, MLflow and requests say, first match wins (lower case)
_TEXT_CAUSES = (
    ("database or disk is full", "No space left on device (the database or disk is full)"),
    ("no space left on device", "No space left on device"),
    ("disk quota exceeded", "disk quota exceeded"),
    ("attempt to write a readonly database", "the store is read-only (no write permission)"),
    ("readonly database", "the store is read-only (no write permission)"),
    ("read-only file system", "read-only file system"),
    ("unable to open database file", "the database file cannot be opened"),
    ("disk i/o error", "disk I/O error"),
    ("database disk image is malformed", "the database file is damaged"),
    ("file is not a database", "the file is not an SQLite database any more"),
    ("no such table", "the store's tables are gone (the database was replaced)"),
    ("permission denied", "permission denied"),
    ("connection refused", "the tracking server refused the connection"),
    ("max retries exceeded", "the tracking server does not answer"),
    ("failed to establish a new connection", "the tracking server does not answer"),
    ("connection aborted", "the tracking server closed the connection"),
    ("read timed out", "the tracking server does not answer"),
    ("bad gateway", "the tracking server's proxy answers 502 Bad Gateway"),
    ("service unavailable", "the tracking server is unavailable (503)"),
)


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from or during (causes first, at most 20)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [err]
    while todo and len(seen) < 20:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__context__, current.__cause__]
        todo += [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        orig = getattr(current, "orig", None)  # SQLAlchemy's DBAPIError wraps sqlite3's error
        if isinstance(orig, BaseException):
            todo.append(orig)
    return seen


def _gone(uri: str) -> str | None:
    """``"store PATH no longer exists"`` when a SQLite store's file (or its folder) is not there any more."""
    path = _sqlite_path(uri)
    if path is None:
        return None
    try:
        exists = Path(path).is_file()
    except OSError:
        exists = False
    return None if exists else f"store {path} no longer exists (moved or deleted)"


def _raised_by_the_store(chain: list[BaseException]) -> bool:
    """Whether an exception of the chain was raised inside MLflow or kdhub's tracking package (not by the
    data, a plugin or the work folder, whose full disk or missing permission is not the store's)."""
    for item in chain:
        tb = item.__traceback__
        while tb is not None:
            name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
            if "/mlflow/" in name or "/kdhub/tracking/" in name or "/sqlalchemy/" in name:
                return True
            tb = tb.tb_next
    return False


def store_cause(err: BaseException, uri: str, *, any_origin: bool = False) -> str | None:
    """What went wrong with the store at ``uri`` in words, when ``err`` is a store failure; None otherwise.

    Looks through the exception's chain for an ``OSError`` of a full, read-only or unreachable
    store and for what SQLite, SQLAlchemy, MLflow and HTTP clients say about one; a SQLite store whose
    file has gone is named as such whatever the error says. Only errors raised inside MLflow or
    ``kdhub.tracking`` count, unless ``any_origin``.
    """
    if isinstance(err, (KeyboardInterrupt, RunFailedError)) and not isinstance(err, StoreFailure):
        return None
    chain = _chain(err)
    if not any_origin and not _raised_by_the_store(chain):
        return None
    found: str | None = None
    for item in chain:
        if isinstance(item, OSError) and item.errno in _ERRNO_CAUSES:
            found = _ERRNO_CAUSES[item.errno]
            if item.filename and item.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                found += f" ({item.filename})"
            break
    if found is None:
        text = " ".join(str(item) for item in chain).lower()
        found = next((cause for needle, cause in _TEXT_CAUSES if needle in text), None)
    if found is None:
        return None
    return _gone(uri) or found


def resume_command(run_id: str, uri: str | None) -> str:
    """The exact command that resumes ``run_id`` (with ``--tracking-uri`` unless the store is the default one)."""
    command = f"kdhub run --resume {run_id}"
    default = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri and uri != default:
        command += f" --tracking-uri {shlex.quote(uri)}"
    return command


def store_failure(cause: str, uri: str, run_id: str | None, recorded: bool) -> StoreFailure:
    """The one line for a run whose store failed: the store, the cause, the run and how to resume it."""
    where = f"tracking store {uri}: {cause}"
    if run_id is None:
        return StoreFailure(f"{where}; no run was started (fix the store and run again)")
    state = "marked FAILED" if recorded else "left RUNNING (`kdhub runs --stale` lists it)"
    return StoreFailure(
        f"{where}; run {run_id} stopped and is {state}, its checkpoints kept; once the store is fixed,"
        f" resume with: {resume_command(run_id, uri)}"
    )


def finish_guarded(tracker: Any, status: str, reason: str | None) -> bool:
    """End the run as ``status``; on a store error retry once, then give up quietly. Whether it was recorded.

    The error that ended the run is what the user must read: the bookkeeping never raises over it.
    A run left RUNNING is found by ``kdhub runs --stale`` (its process is gone) and resumes as any.
    """
    for attempt in range(2):
        try:
            tracker.finish(status, reason)
            return True
        except Exception as err:  # the original error is being reported
            logging.getLogger("kdhub").debug("recording the run as %s failed: %s", status, err)
            if attempt == 0:
                time.sleep(RETRY_SECONDS)
    return False


def quiet_store_logs() -> None:
    """MLflow logs every SQL error with its traceback before raising it; kdhub reports the error itself."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def local_artifact_folder(artifact_uri: str) -> Path | None:
    """The folder of a run's artifacts when they are local files (``file://`` or a path); None otherwise."""
    parts = urlsplit(artifact_uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "" or (len(parts.scheme) == 1 and artifact_uri[1:3] in (":\\", ":/")):
        return Path(artifact_uri)
    return None


def copy_atomically(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary file beside it: a full disk never truncates ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.kdhub-tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def run_started_line(tracker: Any, resumed: bool) -> str:
    """What ``kdhub run`` prints as its run starts: the run id, the store, and the run's page on a server."""
    verb = "resumed" if resumed else "started"
    line = f"run {tracker.run_id} {verb} in experiment {tracker.experiment!r} of {tracker.uri}"
    if urlsplit(tracker.uri).scheme.lower() in ("http", "https"):
        line += f"; {tracker.uri.rstrip('/')}/#/experiments/{tracker.experiment_id}/runs/{tracker.run_id}"
    return line


def interrupted_line(err: BaseException, signal_name: str = "SIGTERM") -> str:
    """The CLI's line for a run or study stopped by a signal, with the real resume command when there is one."""
    found = getattr(err, "kdhub_resume", None)
    if found is None:
        return f"terminated ({signal_name}); run the study again, or the same command, to continue (finished runs kept)"
    run_id, command = found
    return f"terminated ({signal_name}); run {run_id} is KILLED; resume with: {command}"
