"""The MLflow store: URIs, MLflow's limits, and clients that are safe on first use and under concurrency."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kdhub.contract.errors import KdhubError
from kdhub.contract.limits import _sqlite_path, uri_problem

DEFAULT_URI = "sqlite:///mlflow.db"
KIND_TAG = "kdhub.kind"
"""Tag on kdhub runs: ``train``, ``compare``, ``evaluate``, ``study``; UI filter ``tags.`kdhub.kind` = 'train'``."""
MODEL_NAME = "student"
"""Name of the MLflow model a run logs (``runs:/<run_id>/...`` artifacts stay separate)."""
MODEL_CHECKPOINT = "kdhub_student.pt"
"""kdhub checkpoint inside the logged model (``extra_files/``): what ``models:/`` teacher weights load."""
_CONTEXT_TAG = "mlflow.data.context"
_NOTE_TAG = "mlflow.note.content"
_MAX_TAG = 8000

log = logging.getLogger("kdhub")

PROBE_TIMEOUT_S = 5.0
"""How long a tracking server may take to accept a connection before kdhub gives up on it."""


def tracking_uri(configured: str | None = None) -> str:
    """The config's URI, else $MLFLOW_TRACKING_URI, else a local SQLite store ``mlflow.db``."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _probe(uri: str) -> None:
    """Fail fast, naming the URI, when a tracking server does not accept connections."""
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as err:
        reason = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise KdhubError(
            f"tracking.uri: cannot reach {uri} ({reason} within {PROBE_TIMEOUT_S:g} s); "
            "start the MLflow server or fix the URI"
        ) from None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise first use of a SQLite store across processes (its schema migration is not safe in parallel)."""
    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    try:
        import fcntl

        handle = open(f"{path}.lock", "a")  # noqa: SIM115  (held for the duration of the block)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


_READY: set[str] = set()


def _existing_client(uri: str, what: str) -> Any:
    """A client for a store that must already exist (reading a run never creates an empty store)."""
    path = _sqlite_path(uri)
    if path is not None and not Path(path).exists():
        raise KdhubError(f"{what}: there is no MLflow store at {uri} (give --tracking-uri or tracking.uri)")
    return _client(uri)


def _client(uri: str) -> Any:
    """An MlflowClient whose store is usable: one line naming the URI otherwise (no traceback, no hang)."""
    import logging

    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from kdhub.tracking.firstuse import set_up_store  # waits out another MLflow client creating the same store

    if uri in _READY:
        return _retrying(mlflow.MlflowClient(tracking_uri=uri), uri)
    problem = uri_problem(uri)
    if problem:
        raise KdhubError(f"tracking.uri: {problem}")
    if urlsplit(uri).scheme.lower() in ("http", "https"):
        _probe(uri)
    try:
        with _store_lock(uri):
            client = set_up_store(lambda: _opened(mlflow.MlflowClient(tracking_uri=uri)), uri)
    except KdhubError:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise KdhubError(f"tracking.uri: cannot use {uri}: {type(err).__name__}: {first}") from None
    _READY.add(uri)
    return _retrying(client, uri)


def _opened(client: Any) -> Any:
    client.search_experiments(max_results=1)  # creates / migrates the store's tables
    return client


def _retrying(client: Any, uri: str) -> Any:
    return _RetryWhenLocked(client) if _sqlite_path(uri) is not None else client


class _RetryWhenLocked:
    """An MlflowClient whose calls retry while another process holds the SQLite store's write lock.

    SQLite lets one writer in at a time; MLflow waits 20 s for the lock, and a write that still
    finds it held (several runs of a study logging at once) fails with "database is locked". The
    failed transaction was rolled back, so the call is safe to repeat.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(8):
                try:
                    return attr(*args, **kwargs)
                except Exception as err:
                    if "database is locked" not in str(err) or attempt == 7:
                        raise
                    time.sleep(min(0.2 * 2**attempt, 5.0))
            raise AssertionError("unreachable")

        return call
