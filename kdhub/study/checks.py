"""A study's options checked before anything starts (``--dry-run`` included): one line for each mistake.

- ``--address``: empty, or not an address Ray understands, or given to the local executor; a Ray
  cluster that does not accept connections is found within ``KDHUB_RAY_CONNECT_TIMEOUT`` seconds
  (30 by default) instead of Ray retrying for minutes.
- ``search.objective``: a metric no run logs every epoch (``foo/bar``) is refused before any trial.
- ``search.storage``: Optuna keeps trials in a database; a URL that is not one is refused.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any

from kdhub.contract.errors import ConfigError, KdhubError

__all__ = [
    "DEFAULT_RAY_CONNECT_TIMEOUT",
    "EPOCH_METRIC_PREFIXES",
    "check_address",
    "check_search_options",
    "check_study_options",
    "probe_ray_address",
    "ray_connect_timeout",
]

DEFAULT_RAY_CONNECT_TIMEOUT = 30.0
"""Seconds a Ray cluster's address may take to accept a connection (``$KDHUB_RAY_CONNECT_TIMEOUT``)."""

EPOCH_METRIC_PREFIXES = ("val", "holdout", "train", "loss", "policy", "data")
"""The namespaces of what every run logs each epoch (``val/acc``, ``holdout/acc``, ``loss/kd`` ...)."""
_EPOCH_METRICS = ("lr", "images_per_s")

_DATABASES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql", "cockroachdb")
_ADDRESS = re.compile(r"^(?:ray://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?::(?P<port>\d{1,5}))?$")
_RAY_CLIENT_PORT = 10001


def ray_connect_timeout() -> float:
    """``$KDHUB_RAY_CONNECT_TIMEOUT`` seconds (30 by default; at least 0.1)."""
    try:
        return max(0.1, float(os.environ.get("KDHUB_RAY_CONNECT_TIMEOUT", DEFAULT_RAY_CONNECT_TIMEOUT)))
    except ValueError:
        return DEFAULT_RAY_CONNECT_TIMEOUT


def _host_port(address: str) -> tuple[str, int] | None:
    """Where a Ray address is reached: (host, port); None for ``auto`` and ``local``."""
    if address in ("auto", "local"):
        return None
    found = _ADDRESS.match(address)
    if found is None:
        raise KdhubError(
            f"--address {address!r}: not a Ray address (give auto, host:port of the head's GCS, e.g."
            f" 10.0.0.5:6379, or ray://host:{_RAY_CLIENT_PORT} of its client server)"
        )
    port_text = found.group("port")
    if port_text is None:
        if not address.startswith("ray://"):
            raise KdhubError(
                f"--address {address!r}: no port (give host:port of the head's GCS, e.g. {address}:6379, or "
                f"ray://{address}:{_RAY_CLIENT_PORT})"
            )
        port_text = str(_RAY_CLIENT_PORT)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise KdhubError(f"--address {address!r}: port {port} is not 1..65535")
    return found.group("host").strip("[]"), port


def check_address(executor: str, address: str | None) -> None:
    """Refuse an empty or malformed ``--address``, and one given to the local executor (one line each)."""
    if address is None:
        return
    if not address.strip():
        raise KdhubError(
            "--address: empty (give the Ray cluster's address, e.g. auto or ray://head:10001, or leave "
            "--address out to start a local Ray instance)"
        )
    if executor != "ray":
        raise KdhubError(f"--address {address}: only the ray executor joins a cluster; add --executor ray")
    _host_port(address.strip())


def probe_ray_address(address: str, timeout: float | None = None) -> None:
    """Fail within ``timeout`` seconds, naming the address, when nothing accepts connections there."""
    where = _host_port(address)
    if where is None:
        return
    seconds = ray_connect_timeout() if timeout is None else timeout
    host, port = where
    try:
        with socket.create_connection((host, port), timeout=seconds):
            pass
    except OSError as err:
        reason = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise KdhubError(
            f"--address {address}: no Ray cluster answers at {host}:{port} ({reason} within {seconds:g} s); "
            "start it (ray start --head) or fix the address; KDHUB_RAY_CONNECT_TIMEOUT sets the wait"
        ) from None


def check_search_options(study: Any) -> None:
    """Refuse a search whose objective no run logs every epoch, or whose storage is not a database URL."""
    spec = getattr(study, "search", None)
    if spec is None:
        return
    objective = spec.objective
    head = objective.split("/", 1)[0]
    if objective not in _EPOCH_METRICS and (head not in EPOCH_METRIC_PREFIXES or "/" not in objective):
        raise ConfigError(
            f"search.objective: {objective!r} is not a metric the runs log every epoch (those are "
            f"{', '.join(p + '/...' for p in EPOCH_METRIC_PREFIXES)}, {', '.join(_EPOCH_METRICS)}); e.g. val/acc"
        )
    storage = spec.storage
    if storage is not None:
        scheme = storage.split("://", 1)[0].split("+", 1)[0].lower() if "://" in storage else ""
        if scheme not in _DATABASES or not storage.split("://", 1)[1]:
            raise ConfigError(
                f"search.storage: {storage!r} is not a database URL (Optuna keeps its trials in one: "
                "sqlite:///path/optuna.db, postgresql://user@host/db, mysql://user@host/db)"
            )


def check_study_options(study: Any, executor: str, address: str | None) -> None:
    """Everything about a study's options that can be known before it starts (``--dry-run`` included)."""
    check_address(executor, address)
    check_search_options(study)
