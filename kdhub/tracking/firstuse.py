"""First use of a new SQLite store while another MLflow client (``mlflow ui``, a notebook) sets it up too.

kdhub's own processes take a file lock around creating a store's tables; other MLflow clients do not.
When both create the same new database at once, MLflow's schema set-up in one of them fails half-way
(SQLAlchemy's ``CircularDependencyError``, ``AttributeError: dimension_attributes``, "table ... already
exists", "database is locked"): the database is fine, the other client is just not done. kdhub waits and
tries again instead of reporting a config error; only a set-up that still fails after ``SETUP_ATTEMPTS``
tries (``SETUP_WAIT_SECONDS`` of pauses) is reported, as a store failure (exit 1) naming the store and the
cause.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from kdhub.contract.errors import RunFailedError

__all__ = ["SETUP_ATTEMPTS", "SETUP_WAIT_SECONDS", "StoreSetupError", "is_setup_race", "set_up_store"]

SETUP_ATTEMPTS = 16
"""How often first use of a store tries its schema set-up while another MLflow client's is under way."""
SETUP_WAIT_SECONDS = 0.2 + 0.4 + 0.8 + 1.6 + 2.0 * (SETUP_ATTEMPTS - 5)
"""The pauses between those tries, in all (about 25 s)."""

T = TypeVar("T")

# what MLflow's schema set-up raises in one process while another one is creating the same tables
_RACE_TEXT = (
    "circulardependencyerror",
    "circular dependency",
    "dimension_attributes",
    "already exists",
    "database is locked",
    "no such table",
    "alembic_version",
    "duplicate column",
    "unique constraint failed: alembic",
)


class StoreSetupError(RunFailedError):
    """A new store's schema could not be set up in time: the store's problem, not the config's (exit 1)."""


def is_setup_race(err: BaseException) -> bool:
    """Whether ``err`` (or an error it came from) is MLflow's schema set-up tripping over another client's."""
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and len(seen) < 10 and all(current is not s for s in seen):
        seen.append(current)
        text = f"{type(current).__name__}: {current}".lower()
        if any(needle in text for needle in _RACE_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def set_up_store(open_store: Callable[[], T], uri: str, attempts: int | None = None) -> T:
    """``open_store()`` (create the client, create or migrate the tables), again while another client's set-up
    of the same store is under way (up to ``attempts`` tries, pausing 0.2 s, 0.4 s ... 2 s in between, about
    ``SETUP_WAIT_SECONDS`` in all); :class:`StoreSetupError` if it still fails.

    Errors that are not such a race (a bad file, no permission) are raised at once, unchanged. Tries are
    counted rather than timed: opening a store takes seconds on a busy machine, and is not the wait.
    """
    tries = SETUP_ATTEMPTS if attempts is None else attempts
    pause = 0.2
    for attempt in range(1, tries + 1):
        try:
            return open_store()
        except Exception as err:
            if not is_setup_race(err):
                raise
            if attempt == tries:
                first = (str(err).strip().splitlines() or [""])[0][:200]
                raise StoreSetupError(
                    f"tracking store {uri}: its tables could not be set up in {tries} tries while another MLflow"
                    f" client was creating them ({type(err).__name__}: {first}); run the command again"
                ) from None
            _forget(uri)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
    raise AssertionError("unreachable")


def _forget(uri: str) -> None:
    """Drop MLflow's cached stores (one opened while the other client was half-way must be opened afresh)."""
    try:
        from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry
    except ImportError:
        return
    cached: Any = getattr(TrackingStoreRegistry, "_get_store_with_resolved_uri", None)
    clear = getattr(cached, "cache_clear", None)
    if clear is not None:
        clear()
