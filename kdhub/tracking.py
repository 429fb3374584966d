"""MLflow tracking: the only module that imports mlflow."""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kdhub.errors import KdhubError
from kdhub.plugins import get_registry, loaded_plugins
from kdhub.runlog import Table

if TYPE_CHECKING:
    from kdhub.config import RunConfig  # config checks tracking's limits: no import at run time

__all__ = [
    "DEFAULT_URI",
    "MAX_EXPERIMENT_NAME_LENGTH",
    "MAX_RUN_NAME_LENGTH",
    "MAX_TAG_KEY_LENGTH",
    "MAX_TAG_VALUE_LENGTH",
    "Tracker",
    "check_reference",
    "check_resumable",
    "flatten",
    "load_run_config",
    "load_table",
    "resolve_artifact",
    "run_info",
    "tag_problem",
    "tracking_uri",
    "uri_problem",
]

DEFAULT_URI = "sqlite:///mlflow.db"
_KEY = re.compile(r"[^0-9A-Za-z_\-. /]")

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
    if uri in _READY:
        return mlflow.MlflowClient(tracking_uri=uri)
    problem = uri_problem(uri)
    if problem:
        raise KdhubError(f"tracking.uri: {problem}")
    if urlsplit(uri).scheme.lower() in ("http", "https"):
        _probe(uri)
    try:
        with _store_lock(uri):
            client = mlflow.MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # creates / migrates the store's tables
    except KdhubError:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise KdhubError(f"tracking.uri: cannot use {uri}: {type(err).__name__}: {first}") from None
    _READY.add(uri)
    return client


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts and lists as ``a.b.0.c`` keys with string values (MLflow params)."""
    out: dict[str, str] = {}
    if isinstance(data, dict) and data:
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list) and data and any(isinstance(v, (dict, list)) for v in data):
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}.{i}"))
    else:
        out[prefix] = json.dumps(data) if isinstance(data, (list, dict)) else str(data)
    return out


def _safe_key(key: str) -> str:
    return _KEY.sub("_", key)


class Tracker:
    """Logs one run to MLflow (implements :class:`kdhub.RunLog` for plugins)."""

    def __init__(self, uri: str | None = None, experiment: str = "kdhub") -> None:
        self.uri = tracking_uri(uri)
        self.client = _client(self.uri)
        self.experiment = experiment
        self.run_id: str | None = None

    def start(self, run_name: str | None, tags: dict[str, str], resume_run_id: str | None = None) -> str:
        if resume_run_id:
            run = _get_run(self.client, resume_run_id, self.uri, "--resume")
            _refuse_finished(run, resume_run_id)
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "kdhub.resumed", "true")
            return self.run_id
        experiment_id = self._experiment_id()
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        return self.run_id

    def beat(self) -> None:
        """Record this process as the run's writer and keep its heartbeat tag fresh (a daemon thread)."""
        assert self.run_id is not None
        self.client.set_tag(self.run_id, HOST_TAG, socket.gethostname())
        self.client.set_tag(self.run_id, PID_TAG, str(os.getpid()))
        self.client.set_tag(self.run_id, HEARTBEAT_TAG, str(int(time.time())))
        self._heartbeat = _Heartbeat(self.uri, self.run_id, heartbeat_seconds())
        self._heartbeat.start()

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise KdhubError(
                    f"tracking.experiment: {self.experiment!r} is deleted in {self.uri} "
                    "(restore it with `mlflow experiments restore` or choose another name)"
                )
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except Exception:  # another process created it in the meantime
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    # RunLog -----------------------------------------------------------------------------------
    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(_safe_key(k), float(v), now, step or 0)
            for k, v in values.items()
            if v is not None and not (isinstance(v, float) and math.isinf(v))
        ]
        for i in range(0, len(items), 900):
            self.client.log_batch(self.run_id, metrics=items[i : i + 900])

    def logged_steps(self) -> dict[str, int]:
        """The last step logged for each metric key of the run (what a resumed run must not log again)."""
        keys = self.client.get_run(self.run_id).data.metrics
        return {key: max(m.step for m in self.client.get_metric_history(self.run_id, key)) for key in keys}

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(_safe_key(k), str(v)[:6000]) for k, v in values.items() if _safe_key(k) not in existing]
        for i in range(0, len(items), 90):
            self.client.log_batch(self.run_id, params=items[i : i + 90])

    def table(self, name: str, data: Table) -> None:
        columns = list(data)
        rows = [list(r) for r in zip(*(data[c] for c in columns), strict=True)]
        payload = {"columns": columns, "data": [[_jsonable(v) for v in row] for row in rows]}
        self.client.log_dict(self.run_id, payload, f"tables/{name}.json")

    def figure(self, name: str, figure: Any) -> None:
        self.client.log_figure(self.run_id, figure, f"figures/{name}.png")

    def text(self, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, name)

    # files ------------------------------------------------------------------------------------
    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """End the run; a FINISHED run loses the ``kdhub.failure`` tag of an earlier, interrupted attempt."""
        heartbeat = getattr(self, "_heartbeat", None)
        if heartbeat is not None:
            heartbeat.stop()
        if reason:
            self.client.set_tag(self.run_id, "kdhub.failure", reason[:5000])
        elif status == "FINISHED" and "kdhub.failure" in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, "kdhub.failure")
        self.client.set_terminated(self.run_id, status=status)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


_RUN_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


def _split_reference(reference: str, where: str) -> tuple[str, str]:
    """(run id, artifact path) of ``runs:/<run_id>/<path>``; ``..``, absolute and empty paths are refused."""
    run_id, _, artifact = reference[len("runs:/") :].partition("/")
    label = f"{where}: {reference}" if where else reference
    if not _RUN_ID.match(run_id) or not artifact:
        raise KdhubError(f"{label}: expected runs:/<run_id>/<artifact path>")
    parts = artifact.split("/")
    if artifact.startswith("/") or "\\" in artifact or ".." in parts or any(not p for p in parts):
        raise KdhubError(
            f"{label}: the artifact path must stay inside the run's artifacts (no '..', no absolute or empty parts)"
        )
    return run_id, artifact


def _get_run(client: Any, run_id: str, uri: str, where: str) -> Any:
    """The MLflow run ``run_id``; a one-line error when it does not exist or was deleted."""
    try:
        run = client.get_run(run_id)
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise KdhubError(f"{where}: run {run_id!r} not found in {uri} ({first})") from None
    if run.info.lifecycle_stage == "deleted":
        raise KdhubError(
            f"{where}: run {run_id!r} was deleted from {uri} (restore it with `mlflow runs restore --run-id "
            f"{run_id}`, or point at another run)"
        )
    return run


def _refuse_finished(run: Any, run_id: str) -> None:
    if run.info.status == "FINISHED":
        raise KdhubError(
            f"--resume {run_id}: the run already FINISHED, there is nothing to resume "
            "(start a new run; to train longer, start one from its weights)"
        )


def check_resumable(run_id: str, uri: str | None = None) -> None:
    """Refuse ``--resume`` of a run that does not exist, was deleted or already FINISHED."""
    resolved = tracking_uri(uri)
    if not _RUN_ID.match(run_id):
        raise KdhubError(f"--resume {run_id!r}: not an MLflow run id")
    _refuse_finished(_get_run(_existing_client(resolved, "--resume"), run_id, resolved, "--resume"), run_id)


def _local(reference: str, where: str) -> Path:
    label = f"{where}: {reference}" if where else reference
    if len(reference) > 200:
        label = f"{where}: {reference[:80]}... ({len(reference)} characters)" if where else reference[:80]
    try:
        path = Path(reference).expanduser()
        if not path.exists():
            raise KdhubError(f"{label}: no such file")
        if path.is_dir():
            raise KdhubError(f"{label}: is a folder, not a weights file")
        if not path.is_file():
            raise KdhubError(f"{label}: is not a regular file (a device or a pipe?)")
    except OSError as err:
        raise KdhubError(f"{label}: cannot use this path: {err.strerror or err}") from None
    return path


def check_reference(reference: str, uri: str | None = None, where: str = "") -> None:
    """Check that a file path or ``runs:/`` reference names an existing file, without downloading it."""
    if not reference.startswith("runs:/"):
        _local(reference, where)
        return
    run_id, artifact = _split_reference(reference, where)
    resolved = tracking_uri(uri)
    label = f"{where}: {reference}" if where else reference
    client = _existing_client(resolved, label)
    _get_run(client, run_id, resolved, label)
    folder = posixpath.dirname(artifact) or None
    try:
        listed = {f.path for f in client.list_artifacts(run_id, folder)}
    except Exception:
        return  # listing is not supported by every artifact store: the download reports problems
    if artifact not in listed:
        raise KdhubError(
            f"{where + ': ' if where else ''}{reference}: run {run_id} has no artifact {artifact!r}"
            + (f" (it has: {', '.join(sorted(listed)[:5])})" if listed else "")
        )


def resolve_artifact(reference: str, uri: str | None, dest: Path, where: str = "") -> Path:
    """A local path for a file path, or for an MLflow ``runs:/<run_id>/<artifact path>`` reference
    downloaded into ``dest`` (the caller owns that folder and removes it).

    The artifact path is resolved inside that run's artifacts only: ``..``, absolute paths and a
    deleted run are refused; ``where`` (a config path such as ``teacher.weights``) prefixes errors.
    """
    if not reference.startswith("runs:/"):
        return _local(reference, where)
    run_id, artifact = _split_reference(reference, where)
    resolved = tracking_uri(uri)
    label = f"{where}: {reference}" if where else reference
    client = _existing_client(resolved, label)
    _get_run(client, run_id, resolved, label)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest
    try:
        path = Path(client.download_artifacts(run_id, artifact, str(target))).resolve()
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise KdhubError(f"{label}: cannot fetch from {resolved}: {first}") from None
    if not path.is_relative_to(target.resolve()):
        raise KdhubError(f"{label}: the artifact resolves outside the download folder ({path}); refused")
    return path


def artifact_exists(run_id: str, path: str, uri: str | None = None) -> bool:
    """Whether a run has the artifact ``path`` (e.g. ``checkpoints/last.pt``)."""
    folder = path.rsplit("/", 1)[0] if "/" in path else ""
    client = _client(tracking_uri(uri))
    try:
        return any(a.path == path for a in client.list_artifacts(run_id, folder or None))
    except Exception:
        return False


def load_table(run_id: str, name: str, uri: str | None = None) -> Table:
    """A table a run logged with ``RunLog.table`` (e.g. ``test/per_class_accuracy``), as columns."""
    with tempfile.TemporaryDirectory(prefix="kdhub-") as folder:
        path = resolve_artifact(f"runs:/{run_id}/tables/{name}.json", uri, Path(folder))
        payload = json.loads(path.read_text())
    columns = payload["columns"]
    return {c: [row[i] if row[i] is not None else math.nan for row in payload["data"]] for i, c in enumerate(columns)}


def load_run_config(run_id: str, uri: str | None = None) -> dict[str, Any]:
    """The config a run logged (``config.yaml``), read with kdhub's safe YAML loader."""
    from kdhub.config import read_yaml

    with tempfile.TemporaryDirectory(prefix="kdhub-") as folder:
        path = resolve_artifact(f"runs:/{run_id}/config.yaml", uri, Path(folder))
        data = read_yaml(path, f"config of run {run_id}")
    if not isinstance(data, dict):
        raise KdhubError(f"run {run_id}: its config.yaml is not a mapping")
    return data


def run_info(run_id: str, uri: str | None = None) -> dict[str, Any]:
    """Status, name, experiment (id and name), tags, params and latest metrics of a run."""
    client = _existing_client(tracking_uri(uri), f"run {run_id}")
    try:
        run = client.get_run(run_id)
    except Exception as err:
        raise KdhubError(f"run {run_id!r} not found in {tracking_uri(uri)}: {str(err).splitlines()[0]}") from None
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "experiment_id": run.info.experiment_id,
        "experiment": client.get_experiment(run.info.experiment_id).name,
        "tags": dict(run.data.tags),
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
    }


# what a run logs ------------------------------------------------------------------------------------


def run_params(config: RunConfig, options: dict[str, Any]) -> dict[str, str]:
    """Flattened params: ``method.kd.temperature``, ``policy.tllm.eta``, ``optim.lr``, ... with defaults."""
    registry = get_registry()
    params: dict[str, str] = {
        "seed": str(config.seed),
        "epochs": str(config.epochs),
        "ce_weight": str(config.ce_weight),
    }
    for section in ("optim", "schedule", "train", "checkpoint"):
        params.update(flatten(getattr(config, section).model_dump(mode="json"), section))
    data = config.data.model_dump(mode="json", exclude={"options"})
    params.update(flatten(data, "data"))
    params.update(flatten(options["data"].model_dump(mode="json"), "data.options"))
    params.update(flatten({"name": config.student.name, **options["student"].model_dump(mode="json")}, "student"))
    if config.teacher is not None:
        t = {
            "name": config.teacher.name,
            "weights": config.teacher.weights,
            **options["teacher"].model_dump(mode="json"),
        }
        params.update(flatten(t, "teacher"))
    for i, ref in enumerate(config.methods):
        weight = ref.weight if ref.weight is not None else registry.get("method", ref.name).default_weight
        values = {"weight": weight, **options[f"methods.{i}"].model_dump(mode="json")}
        params.update(flatten(values, f"method.{ref.name}"))
    params.update(flatten({"name": config.policy.name, **options["policy"].model_dump(mode="json")}, "policy"))
    for i, metric in enumerate(config.metrics):
        values = {"split": metric.split, "every": metric.every, **options[f"metrics.{i}"].model_dump(mode="json")}
        params.update(flatten(values, f"metric.{metric.name}"))
    return params


def run_tags(config: RunConfig) -> dict[str, str]:
    import kdhub

    tags = {
        "kdhub.version": kdhub.__version__,
        "student": config.student.name,
        "teacher": config.teacher.name if config.teacher else "none",
        "method": ",".join(m.name for m in config.methods) or "none",
        "policy": config.policy.name,
        "dataset": config.data.name,
        "seed": str(config.seed),
    }
    for info in loaded_plugins():
        tags[f"kdhub.plugin.{info.distribution}"] = info.version or "local"
    tags.update(config.tracking.tags)
    return tags


def default_run_name(config: RunConfig) -> str:
    if config.teacher is None:
        return f"{config.student.name}-{config.data.name}-s{config.seed}"
    methods = "+".join(m.name for m in config.methods) or "none"
    return f"{config.teacher.name}-{methods}-{config.student.name}-{config.data.name}-s{config.seed}"


# liveness -----------------------------------------------------------------------------------------

HOST_TAG, PID_TAG, HEARTBEAT_TAG = "kdhub.host", "kdhub.pid", "kdhub.heartbeat"
STALE_BEATS = 4
"""A RUNNING run whose heartbeat is older than this many intervals has lost its process."""


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
                client.set_tag(self.run_id, HEARTBEAT_TAG, str(int(time.time())))
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
        age = now - float(tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return False, "it has no heartbeat"
    host, pid = tags.get(HOST_TAG, "?"), tags.get(PID_TAG, "?")
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
