"""What MLflow accepts, checked before a run starts: tag and name lengths, tag keys, tracking URIs.

The run config validates against these (so a bad value fails at load time, naming its YAML path);
:mod:`kdhub.tracking` applies the same limits when it writes. No MLflow import here.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "MAX_EXPERIMENT_NAME_LENGTH",
    "MAX_RUN_NAME_LENGTH",
    "MAX_TAG_KEY_LENGTH",
    "MAX_TAG_VALUE_LENGTH",
    "tag_problem",
    "uri_problem",
]

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
