"""The MLflow store: URIs, MLflow's limits, and clients that are safe on first use and under concurrency."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kdhub.errors import KdhubError

if TYPE_CHECKING:
    pass  # config checks tracking's limits: no import at run time


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

# MLflow 3.x limits (mlflow/utils/validation.py: MAX_ENTITY_KEY_LENGTH, MAX_TAG_VAL_LENGTH,
# MAX_EXPERIMENT_NAME_LENGTH, validate_param_and_metric_name, path_not_unique; the run name is the
# runs.name column, String(250), of mlflow/store/tracking/dbmodels/models.py). Checked before a run starts.
MAX_TAG_KEY_LENGTH = 250
MAX_TAG_VALUE_LENGTH = 8000
MAX_EXPERIMENT_NAME_LENGTH = 500
MAX_RUN_NAME_LENGTH = 250
_TAG_KEY = re.compile(r"^[/\w.\- :]*$")
_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
_SCHEMES = (*_DATABASES, "http", "https", "databricks", "databricks-uc", "uc")
_SQLITE_MAGIC = b"SQLite format 3\x00"
PROBE_TIMEOUT_S = 5.0
"""How long a tracking server may take to accept a connection before kdhub gives up on it."""


def tracking_uri(configured: str | None = None) -> str:
    """The config's URI, else $MLFLOW_TRACKING_URI, else a local SQLite store ``mlflow.db``."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def tag_problem(key: Any, value: Any) -> str | None:
    """Why MLflow would refuse (or truncate) the tag ``key: value``; None when it is fine."""
    if not isinstance(key, str) or not key:
        return f"tag key {key!r} must be a non-empty string"
    if len(key) > MAX_TAG_KEY_LENGTH:
        return f"tag key {key[:40]!r}... is {len(key)} characters (MLflow allows {MAX_TAG_KEY_LENGTH})"
    if not _TAG_KEY.match(key):
        return f"tag key {key!r}: MLflow allows only letters, digits, _ - . : / and spaces in a tag key"
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith(("..", "/")):
        return f"tag key {key!r}: MLflow refuses keys that read as other paths (it would be {norm!r})"
    if isinstance(value, str) and len(value) > MAX_TAG_VALUE_LENGTH:
        return f"tag {key!r}: the value is {len(value):,} characters (MLflow keeps {MAX_TAG_VALUE_LENGTH:,})"
    return None


def _sqlite_path(uri: str) -> str | None:
    """The database file of a ``sqlite:///`` URI (None for an in-memory database)."""
    path = uri[len("sqlite:///") :].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
    return path if path and path != ":memory:" else None


def uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be an MLflow tracking store for kdhub (None when it looks usable).

    Checks the scheme, and for SQLite that the file is a database (or new) in an existing folder.
    Servers are probed when the client is created (:func:`_client`).
    """
    use = "give sqlite:///path/to/mlflow.db or http(s)://host:port of an MLflow server"
    try:
        parts = urlsplit(uri)
    except ValueError as err:
        return f"{uri!r} is not a URI ({err}); {use}"
    scheme = parts.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and uri[1:2] == ":"):
        return f"{uri!r} is not a tracking URI (MLflow's file store is retired); {use}"
    base = scheme.split("+", 1)[0]
    if base not in _SCHEMES:
        return f"{uri!r}: unsupported scheme {scheme!r} (MLflow takes {', '.join(_SCHEMES)}); {use}"
    if base in ("http", "https") and not parts.hostname:
        return f"{uri!r} names no server; {use}"
    if base == "sqlite":
        if not uri.startswith("sqlite:///"):
            return f"{uri!r}: a SQLite URI is sqlite:///relative/path.db or sqlite:////absolute/path.db"
        path = _sqlite_path(uri)
        if path is None:
            return f"{uri!r} is an in-memory database that is lost when kdhub exits; {use}"
        file = Path(path)
        try:
            if file.exists():
                if not file.is_file():
                    return f"{uri!r}: {path} is not a file"
                with open(file, "rb") as handle:
                    head = handle.read(len(_SQLITE_MAGIC))
                if head and head != _SQLITE_MAGIC:
                    return f"{uri!r}: {path} is not an SQLite database (give a new or an MLflow .db file)"
            elif not file.parent.is_dir() and str(file.parent) not in ("", "."):
                return f"{uri!r}: the folder {file.parent} does not exist"
        except OSError as err:
            return f"{uri!r}: cannot use {path}: {err.strerror or err}"
    return None


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
