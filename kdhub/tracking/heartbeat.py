"""Heartbeats of running runs, and which RUNNING runs lost their process (``kdhub runs --stale``)."""

from __future__ import annotations

import calendar
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from kdhub.tracking.store import _client, tracking_uri

if TYPE_CHECKING:
    pass  # config checks tracking's limits: no import at run time


# liveness -----------------------------------------------------------------------------------------

HOST_TAG, PID_TAG, HEARTBEAT_TAG = "kdhub.system.host", "kdhub.system.pid", "kdhub.system.heartbeat"
"""The process writing a run and its last heartbeat (``2026-12-06 20:51:03 UTC``), apart from the run's own tags."""
_EARLIER_TAGS = {HOST_TAG: "kdhub.host", PID_TAG: "kdhub.pid", HEARTBEAT_TAG: "kdhub.heartbeat"}
_STAMP = "%Y-%m-%d %H:%M:%S UTC"
STALE_BEATS = 4
"""A RUNNING run whose heartbeat is older than this many intervals has lost its process."""


def heartbeat_stamp(now: float | None = None) -> str:
    """A heartbeat tag's value: the time in UTC, readable (``2026-12-06 20:51:03 UTC``)."""
    return time.strftime(_STAMP, time.gmtime(time.time() if now is None else now))


def system_tag(tags: dict[str, str], key: str) -> str | None:
    """``HOST_TAG``, ``PID_TAG`` or ``HEARTBEAT_TAG`` of a run, also from runs of kdhub versions that wrote
    them as ``kdhub.host``, ``kdhub.pid`` and ``kdhub.heartbeat`` (epoch seconds)."""
    return tags.get(key, tags.get(_EARLIER_TAGS[key]))


def _beat_time(value: str) -> float:
    """Epoch seconds of a heartbeat tag (readable UTC, or the epoch seconds earlier versions wrote)."""
    try:
        return float(value)
    except ValueError:
        return float(calendar.timegm(time.strptime(value, _STAMP)))


def heartbeat_seconds() -> float:
    """Seconds between heartbeats: ``$KDHUB_HEARTBEAT_SECONDS`` or 30."""
    try:
        return max(0.1, float(os.environ.get("KDHUB_HEARTBEAT_SECONDS", "30")))
    except ValueError:
        return 30.0


class _Heartbeat(threading.Thread):
    """Sets the run's heartbeat tag every ``interval`` seconds until stopped (a missed beat is harmless)."""

    def __init__(self, uri: str, run_id: str, interval: float) -> None:
        super().__init__(name="kdhub-heartbeat", daemon=True)
        self.uri, self.run_id, self.interval = uri, run_id, interval
        self._stopped = threading.Event()

    def run(self) -> None:
        client = _client(self.uri)
        while not self._stopped.wait(self.interval):
            try:
                client.set_tag(self.run_id, HEARTBEAT_TAG, heartbeat_stamp())
            except Exception:
                continue

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def liveness(info: dict[str, Any], now: float | None = None) -> tuple[bool, str]:
    """Whether a RUNNING run's process is still alive (from :func:`run_info`), and why in words.

    Alive: its heartbeat is fresh and, on this host, its process exists. A run killed with SIGKILL
    (or whose machine died) stops beating and is stale after ``STALE_BEATS`` heartbeat intervals.
    """
    tags = info["tags"]
    now = time.time() if now is None else now
    try:
        age = now - _beat_time(system_tag(tags, HEARTBEAT_TAG) or "")
    except ValueError:
        return False, "it has no heartbeat"
    host, pid = system_tag(tags, HOST_TAG) or "?", system_tag(tags, PID_TAG) or "?"
    where = f"pid {pid} on {host}, last heartbeat {age:.0f} s ago"
    if age > STALE_BEATS * heartbeat_seconds():
        return False, where
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return False, f"{where}; that process is gone"
    return True, where


def running_runs(uri: str | None = None, experiment: str | None = None) -> list[dict[str, Any]]:
    """Every RUNNING run, newest first, with ``alive`` (its process is there) and ``why`` (pid, host, heartbeat)."""
    client = _client(tracking_uri(uri))
    experiments = [client.get_experiment_by_name(experiment)] if experiment else client.search_experiments()
    ids = [e.experiment_id for e in experiments if e is not None]
    if not ids:
        return []
    found = []
    for run in client.search_runs(ids, "attributes.status = 'RUNNING'", order_by=["attributes.start_time DESC"]):
        info = {"run_id": run.info.run_id, "name": run.info.run_name, "tags": dict(run.data.tags)}
        alive, why = liveness(info)
        found.append({**info, "alive": alive, "why": why, "experiment_id": run.info.experiment_id})
    return found
