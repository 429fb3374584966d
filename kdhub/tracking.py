"""MLflow tracking: the only module that imports mlflow.

What a run records (docs/mlflow.md): params that apply to it, tags naming its models and plugins,
a description, its command line and git commit, the train / val / test splits as dataset inputs,
per-epoch metrics, tables (MLflow tables) and figures, checkpoints, and at the end the student as an
MLflow model (optionally registered).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import posixpath
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kdhub.errors import KdhubError
from kdhub.plugins import get_registry
from kdhub.runlog import Table

if TYPE_CHECKING:
    from kdhub.config import PluginRef, RunConfig  # config checks tracking's limits: no import at run time

__all__ = [
    "DEFAULT_URI",
    "KIND_TAG",
    "MAX_EXPERIMENT_NAME_LENGTH",
    "MAX_RUN_NAME_LENGTH",
    "MAX_TAG_KEY_LENGTH",
    "MAX_TAG_VALUE_LENGTH",
    "MODEL_CHECKPOINT",
    "Tracker",
    "check_reference",
    "check_resumable",
    "command_line",
    "compare_experiment",
    "delete_run",
    "find_runs",
    "flatten",
    "git_tags",
    "load_run_config",
    "load_table",
    "log_run_end",
    "log_run_start",
    "logged_model_of_run",
    "metric_max",
    "model_label",
    "resolve_artifact",
    "resolve_weights",
    "run_description",
    "run_info",
    "safe_metric_name",
    "set_run_state",
    "store_exists",
    "study_run_tags",
    "tag_problem",
    "teacher_links",
    "tracking_uri",
    "uri_problem",
]

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
    if uri in _READY:
        return _retrying(mlflow.MlflowClient(tracking_uri=uri), uri)
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
    return _retrying(client, uri)


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


_BAD_KEY_CHARS = re.compile(r"[^0-9A-Za-z_\-. /]")


def safe_metric_name(key: str) -> str:
    """A readable MLflow metric / param key: ``compare/kd[temperature=1,alpha=0.5]/pearson_r`` becomes
    ``compare/kd temperature 1 alpha 0.5/pearson_r``.

    MLflow keys allow letters, digits, ``_ - . /`` and spaces (colons are refused on Windows), and
    must not normalise to another path: brackets, ``=`` and commas become spaces, other characters
    ``_``, and empty or dot-only path segments go.
    """
    text = re.sub(r"[\[\]=,;()]", " ", key)
    text = _BAD_KEY_CHARS.sub("_", text)
    parts = [" ".join(part.split()) for part in text.split("/")]
    parts = [p for p in parts if p and p not in (".", "..")]
    return "/".join(parts) or "_"


def _safe_key(key: str) -> str:
    return key if re.fullmatch(r"[0-9A-Za-z_\-.]+(/[0-9A-Za-z_\-.]+)*", key) else safe_metric_name(key)


def compare_experiment(experiment: str) -> str:
    """The experiment comparison runs go to by default, so they do not crowd the training charts."""
    return f"{experiment}-compare"


@contextmanager
def _global_uri(uri: str) -> Iterator[None]:
    """MLflow's model APIs read the global tracking URI: set it for the block only."""
    import mlflow

    try:
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    except ImportError:  # a private helper; fall back to setting and restoring
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)
        return
    with _use_tracking_uri(uri):
        yield


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this process, as a user would type it (``kdhub run cfg.yaml``).

    ``--tracking-uri`` and its value are left out: the run is in that store already, and a URI may
    carry credentials (``https://user:token@host``).
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "python"
    args, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg == "--tracking-uri":
            skip = True
        elif not arg.startswith("--tracking-uri="):
            args.append(arg)
    first = Path(argv[0])
    if first.name == "kdhub" or (first.parent.name == "kdhub" and first.name in ("cli.py", "__main__.py")):
        return shlex.join(["kdhub", *args])
    return shlex.join([first.name or "python", *args])


def git_tags(cwd: str | Path | None = None) -> dict[str, str]:
    """``mlflow.source.git.commit`` (and branch, and whether tracked files differ) of the working directory."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    tags = {"mlflow.source.git.commit": commit}
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    status = git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        tags["kdhub.git.dirty"] = "true" if status else "false"
    return tags


def _source_tags() -> dict[str, str]:
    import getpass

    tags = {"mlflow.source.name": command_line()[:_MAX_TAG], "mlflow.source.type": "LOCAL", **git_tags()}
    with contextlib.suppress(KeyError, OSError):  # no user name in some containers
        tags["mlflow.user"] = getpass.getuser()
    return tags


class Tracker:
    """Logs one run to MLflow (implements :class:`kdhub.RunLog` for plugins)."""

    def __init__(self, uri: str | None = None, experiment: str = "kdhub") -> None:
        self.uri = tracking_uri(uri)
        self.client = _client(self.uri)
        self.experiment = experiment
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.run_name: str | None = None
        self._tables: set[str] = set()  # tables logged by this process (a second log replaces the first)
        self.resumed = False
        self._monitor: Any = None

    def start(self, run_name: str | None, tags: dict[str, str], resume_run_id: str | None = None) -> str:
        """Create the run (with its command line, user and git commit) or reopen ``resume_run_id``."""
        if resume_run_id:
            run = _get_run(self.client, resume_run_id, self.uri, "--resume")
            _refuse_finished(run, resume_run_id)
            self.run_id, self.run_name = run.info.run_id, run.info.run_name
            self.experiment_id = run.info.experiment_id
            self.resumed = True
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "kdhub.resumed", "true")
            return self.run_id
        experiment_id = self._experiment_id()
        run = self.client.create_run(experiment_id, run_name=run_name, tags={**_source_tags(), **tags})
        self.run_id, self.run_name, self.experiment_id = run.info.run_id, run.info.run_name, experiment_id
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

    def describe(self, text: str) -> None:
        """The run's description (``mlflow.note.content``, Markdown), shown on the run's page."""
        self.client.set_tag(self.run_id, _NOTE_TAG, text[:_MAX_TAG])

    def system_metrics(self, interval: float = 10.0) -> None:
        """Start MLflow's system-metrics sampler (``system/...`` metrics) until :meth:`finish`."""
        try:
            import psutil  # noqa: F401  (the sampler needs it; fail here with a clear line)
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError as err:
            raise KdhubError(f"tracking.system_metrics: needs psutil ({err}); pip install psutil") from None
        self._monitor = SystemMetricsMonitor(
            self.run_id, sampling_interval=interval, resume_logging=self.resumed, tracking_uri=self.uri
        )
        self._monitor.start()

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

    def tags(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            self.client.set_tag(self.run_id, key, str(value))

    def table(self, name: str, data: Table) -> None:
        """An MLflow table (``log_table``: the UI's table view) at ``tables/<name>.json``.

        Logging the same name again (a policy's table that grows each epoch, a resumed run) replaces
        the table instead of appending rows (what MLflow's ``log_table`` would do).
        """
        import pandas as pd
        from mlflow.exceptions import MlflowException

        path = f"tables/{name}.json"
        frame = pd.DataFrame({c: list(v) for c, v in data.items()})
        folder = path.rsplit("/", 1)[0]
        logged = path in self._tables or (
            self.resumed and path in {a.path for a in self.client.list_artifacts(self.run_id, folder)}
        )
        self._tables.add(path)
        if logged:
            with tempfile.TemporaryDirectory() as tmp:
                file = Path(tmp) / path.rsplit("/", 1)[1]
                frame.to_json(file, orient="split", index=False)
                self.client.log_artifact(self.run_id, str(file), folder)
            return
        try:
            self.client.log_table(self.run_id, data=frame, artifact_file=path)
        except MlflowException as err:  # the table is written; only the UI's tag list is full
            log.debug("table %s logged without the UI tag: %s", path, err)

    def figure(self, name: str, figure: Any) -> None:
        """A PNG at ``figures/<name>.png`` (150 dpi), titled with the run's name."""
        if self.run_name and figure.get_suptitle() == "":
            figure.suptitle(self.run_name, fontsize=10, fontweight="bold")
        self.client.log_figure(self.run_id, figure, f"figures/{name}.png", save_kwargs={"dpi": 150})

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
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        if reason:
            self.client.set_tag(self.run_id, "kdhub.failure", reason[:5000])
        elif status == "FINISHED" and "kdhub.failure" in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, "kdhub.failure")
        self.client.set_terminated(self.run_id, status=status)

    # datasets and models ------------------------------------------------------------------------
    def datasets(self, descriptions: dict[str, dict[str, Any]]) -> None:
        """Log each split as an MLflow dataset input with the split as its context (see ``DataSource.describe``)."""
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for split, info in descriptions.items():
            inputs.append(DatasetInput(_dataset_entity(info), [InputTag(_CONTEXT_TAG, split)]))
        if inputs:
            self.client.log_inputs(self.run_id, datasets=inputs)

    def log_model(
        self,
        net: Any,
        example: Any,
        *,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        tags: dict[str, str],
        step: int,
    ) -> str:
        """Log ``net`` as the run's MLflow model (pt2); returns its model id.

        ``example`` (a float32 array ``[N, C, H, W]``, N > 1) is the input example and fixes the
        signature's shape (batch dimension free); the run's metrics at ``step`` are linked to the
        model; ``checkpoint`` (a kdhub checkpoint: ``model`` state_dict, ``model_spec``) travels
        inside the model as ``extra_files/kdhub_student.pt`` for ``models:/`` teacher weights.
        """
        import mlflow
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        example = np.ascontiguousarray(example, dtype=np.float32)
        with torch.no_grad():
            logits = net(torch.from_numpy(example))
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *logits.shape[1:]))]),
        )
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]
        # created here so that it belongs to the run's experiment (MLflow would use the global one)
        run = self.client.get_run(self.run_id)
        inherited = {k: v for k, v in run.data.tags.items() if k in ("mlflow.user", "mlflow.source.name", _NOTE_TAG)}
        model = self.client.create_logged_model(
            experiment_id=self.experiment_id,
            name=MODEL_NAME,
            source_run_id=self.run_id,
            tags={**inherited, **tags},
            params=dict(run.data.params),
        )
        with tempfile.TemporaryDirectory(prefix="kdhub-model-") as tmp, self._failed_on_error(model.model_id):
            file = Path(tmp) / MODEL_CHECKPOINT
            torch.save(checkpoint, file)
            with _global_uri(self.uri):
                mlflow.pytorch.log_model(
                    net,
                    name=MODEL_NAME,
                    signature=signature,
                    input_example=example,
                    serialization_format="pt2",
                    pip_requirements=requirements,
                    extra_files=[str(file)],
                    metadata=metadata,
                    run_id=self.run_id,
                    model_id=model.model_id,
                    step=step,
                )
        return str(model.model_id)

    @contextmanager
    def _failed_on_error(self, model_id: str) -> Iterator[None]:
        """Mark a logged model FAILED (not left PENDING) when writing it fails."""
        try:
            yield
        except BaseException:
            from mlflow.entities import LoggedModelStatus

            with contextlib.suppress(Exception):
                self.client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
            raise

    def register_model(self, model_id: str, name: str, tags: dict[str, str], description: str) -> str:
        """Register a logged model as a new version of ``name``; returns the version number."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(
                name, description="Students distilled with kdhub; each version links its training run."
            )
        with _global_uri(self.uri):  # the registry finds the logged model through the global URI
            version = self.client.create_model_version(
                name,
                source=f"models:/{model_id}",
                run_id=self.run_id,
                tags=tags,
                description=description[:5000],
                model_id=model_id,
            )
        # what MLflow's register_model records, so the logged model's page lists its versions
        model = self.client.get_logged_model(model_id)
        versions = json.loads(model.tags.get("mlflow.modelVersions", "[]"))
        versions.append({"name": name, "version": str(version.version)})
        self.client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(versions)})
        return str(version.version)


def _dataset_entity(info: dict[str, Any]) -> Any:
    """An MLflow dataset entity for a ``DataSource.describe`` dict (source type from the source's form)."""
    from mlflow.entities import Dataset

    source = str(info.get("source") or info["name"])
    payload: Any
    if re.match(r"^[a-z][a-z0-9+.-]*://", source):
        source_type, payload = ("http" if source.startswith(("http://", "https://")) else "local"), source
        key = "url" if source_type == "http" else "uri"
    elif source.startswith("/") or source.startswith("."):
        source_type, key, payload = "local", "uri", source
    else:
        source_type, key, payload = "code", "tags", {"kdhub.dataset": info["name"], "loader": source}
    shape = [int(v) for v in info["shape"]]
    features = [{"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, *shape]}}]
    targets = [{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}]
    schema = {"mlflow_tensorspec": {"features": json.dumps(features), "targets": json.dumps(targets)}}
    profile = {
        "num_samples": int(info["num_samples"]),
        "num_classes": int(info["num_classes"]),
        "features_shape": [int(info["num_samples"]), *shape],
    }
    if info.get("indices_digest"):
        profile["indices_digest"] = info["indices_digest"]
    return Dataset(
        name=str(info["name"]),
        digest=str(info["digest"]),
        source_type=source_type,
        source=json.dumps({key: payload}),
        schema=json.dumps(schema),
        profile=json.dumps(profile),
    )


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
    """A local path for a file path, or for an MLflow reference downloaded into ``dest`` (the caller
    owns that folder and removes it): ``runs:/<run_id>/<artifact path>``, or a registered or logged
    student: ``models:/NAME/VERSION``, ``models:/NAME@alias``, ``models:/NAME/latest`` or
    ``models:/<model id>`` (its kdhub checkpoint, see :data:`MODEL_CHECKPOINT`).

    A ``runs:/`` path is resolved inside that run's artifacts only: ``..``, absolute paths and a
    deleted run are refused; ``where`` (a config path such as ``teacher.weights``) prefixes errors.
    """
    if reference.startswith("models:/"):
        return _model_checkpoint(reference, uri, dest)
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


def _model_version(reference: str, client: Any) -> Any | None:
    """The registry version a ``models:/NAME/VERSION|latest`` or ``models:/NAME@alias`` names (None: a model id)."""
    body = reference[len("models:/") :].strip("/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    if "/" not in body:
        return None
    name, version = body.rsplit("/", 1)
    if version == "latest":
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise KdhubError(f"{reference}: registered model {name!r} has no version")
        return max(versions, key=lambda v: int(v.version))
    return client.get_model_version(name, version)


def _model_id(reference: str, client: Any) -> tuple[str, Any | None]:
    version = _model_version(reference, client)
    if version is None:
        return reference[len("models:/") :].strip("/"), None
    model_id = getattr(version, "model_id", None)
    if not model_id and str(version.source).startswith("models:/"):
        model_id = str(version.source)[len("models:/") :].split("/")[0]
    if not model_id:
        raise KdhubError(f"{reference}: version {version.version} is not an MLflow 3 logged model ({version.source})")
    return model_id, version


def _model_checkpoint(reference: str, uri: str | None, dest: Path) -> Path:
    import mlflow

    where = tracking_uri(uri)
    client = _client(where)
    try:
        model_id, _ = _model_id(reference, client)
        model = client.get_logged_model(model_id)
    except KdhubError:
        raise
    except Exception as err:
        raise KdhubError(f"{reference}: not found in {where}: {str(err).splitlines()[0]}") from None
    location = f"{model.artifact_location.rstrip('/')}/extra_files/{MODEL_CHECKPOINT}"
    dest.mkdir(parents=True, exist_ok=True)
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dest), tracking_uri=where)
    except Exception:
        raise KdhubError(
            f"{reference}: model {model_id} holds no extra_files/{MODEL_CHECKPOINT}; kdhub loads weights"
            " only from students it logged"
        ) from None
    return Path(path)


def teacher_links(weights: str | None, uri: str | None = None) -> dict[str, str]:
    """Tags linking a run to where its teacher came from: ``kdhub.teacher_run`` (and ``kdhub.teacher_model``)."""
    if not weights:
        return {}
    if weights.startswith("runs:/"):
        run_id = weights[len("runs:/") :].split("/", 1)[0]
        return {"kdhub.teacher_run": run_id} if run_id else {}
    if weights.startswith("models:/"):
        client = _client(tracking_uri(uri))
        try:
            model_id, version = _model_id(weights, client)
            model = client.get_logged_model(model_id)
        except Exception:  # an unreachable store fails later with the teacher's own message
            return {}
        links = {"kdhub.teacher_model": f"{version.name}/{version.version}" if version else model_id}
        if model.source_run_id:
            links["kdhub.teacher_run"] = model.source_run_id
        return links
    return {}


def logged_model_of_run(run_id: str, uri: str | None = None) -> str | None:
    """The id of the MLflow model a run logged (its last one), or None."""
    client = _client(tracking_uri(uri))
    try:
        run = client.get_run(run_id)
    except Exception as err:
        raise KdhubError(f"run {run_id!r} not found in {tracking_uri(uri)}: {str(err).splitlines()[0]}") from None
    outputs = run.outputs.model_outputs if run.outputs is not None else []
    return outputs[-1].model_id if outputs else None


_MLFLOW_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_weights(reference: str, uri: str | None, dest: Path) -> tuple[Path, str]:
    """A local kdhub checkpoint for a file, ``runs:/``, ``models:/`` or a bare run id, and a short label;
    downloads go into ``dest`` (the caller's folder).

    A run id means the run's ``checkpoints/final.pt``, else the checkpoint inside its logged model.
    """
    if reference.startswith(("runs:/", "models:/")):
        label = reference.rstrip("/").split("/")[-1] if reference.startswith("models:/") else reference.split("/")[1]
        return resolve_artifact(reference, uri, dest), re.sub(r"[^A-Za-z0-9_.@-]", "_", label)
    path = Path(reference).expanduser()
    if path.exists() or not _MLFLOW_RUN_ID.match(reference):
        if not path.is_file():
            raise KdhubError(f"{reference}: no such checkpoint file (or run id)")
        return path, path.stem
    try:
        return resolve_artifact(f"runs:/{reference}/checkpoints/final.pt", uri, dest), reference[:8]
    except KdhubError:
        model_id = logged_model_of_run(reference, uri)
        if model_id is None:
            raise KdhubError(
                f"run {reference} has neither checkpoints/final.pt nor a logged model (did it finish?)"
            ) from None
        return resolve_artifact(f"models:/{model_id}", uri, dest), reference[:8]


def load_table(run_id: str, name: str, uri: str | None = None) -> Table:
    """A table a run logged with ``RunLog.table`` (e.g. ``test/per_class_accuracy``), as columns."""
    with tempfile.TemporaryDirectory(prefix="kdhub-") as folder:
        path = resolve_artifact(f"runs:/{run_id}/tables/{name}.json", uri, Path(folder))
        payload = json.loads(path.read_text())  # MLflow's log_table (pandas "split") and older JSON agree
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


_OPTIMIZER_KEYS = {"sgd": ("momentum", "nesterov"), "adamw": ("betas",)}
_SCHEDULE_KEYS = {"multistep": ("milestones", "gamma"), "cosine": ("min_lr",), "constant": ()}


def run_params(config: RunConfig, options: dict[str, Any], device: str | None = None) -> dict[str, str]:
    """Flattened params that apply to this run: ``method.kd.temperature``, ``optim.lr``, ... with defaults.

    Options of the optimizer and schedule the run does not use are left out (no AdamW betas on an
    SGD run, no milestones on a cosine run); ``train.device`` is ``device`` (the one used) when given.
    """
    params: dict[str, str] = {
        "seed": str(config.seed),
        "epochs": str(config.epochs),
        "ce_weight": str(config.ce_weight),
    }
    optim = config.optim.model_dump(mode="json")
    for other, keys in _OPTIMIZER_KEYS.items():
        if other != config.optim.name:
            for key in keys:
                optim.pop(key, None)
    schedule = config.schedule.model_dump(mode="json")
    for other, keys in _SCHEDULE_KEYS.items():
        if other != config.schedule.name:
            for key in keys:
                schedule.pop(key, None)
    train = config.train.model_dump(mode="json")
    if device is not None:
        train["device"] = device
    for section, values in (("optim", optim), ("schedule", schedule), ("train", train)):
        params.update(flatten(values, section))
    params.update(flatten(config.checkpoint.model_dump(mode="json"), "checkpoint"))
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
        weight = ref.weight if ref.weight is not None else _default_weight(ref.name)
        values = {"weight": weight, **options[f"methods.{i}"].model_dump(mode="json")}
        params.update(flatten(values, f"method.{ref.name}"))
    params.update(flatten({"name": config.policy.name, **options["policy"].model_dump(mode="json")}, "policy"))
    for i, metric in enumerate(config.metrics):
        values = {"split": metric.split, "every": metric.every, **options[f"metrics.{i}"].model_dump(mode="json")}
        params.update(flatten(values, f"metric.{metric.name}"))
    return params


def _default_weight(method: str) -> float:
    return float(getattr(get_registry().get("method", method), "default_weight", 1.0))


def model_label(ref: PluginRef | None) -> str:
    """A plugin with the options its config sets: ``cnn(width=32)``, ``resnet8x4``, ``none``."""
    if ref is None:
        return "none"
    if not ref.options:
        return ref.name
    text = ", ".join(f"{k}={_option_text(v)}" for k, v in ref.options.items())
    return f"{ref.name}({text})"[:_MAX_TAG]


def _option_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _used_plugins(config: RunConfig) -> list[tuple[str, str]]:
    used = [("dataset", config.data.name), ("model", config.student.name), ("policy", config.policy.name)]
    if config.teacher is not None:
        used.append(("model", config.teacher.name))
    used += [("method", m.name) for m in config.methods] + [("metric", m.name) for m in config.metrics]
    return used


def run_tags(config: RunConfig) -> dict[str, str]:
    """Tags of a training run: its models (``cnn(width=32)``), methods, policy, data, seed, the teacher's
    run or registered model, and the versions of the plugin distributions it uses (besides kdhub)."""
    import kdhub

    tags = {
        KIND_TAG: "train",
        "kdhub.version": kdhub.__version__,
        "student": model_label(config.student),
        "teacher": model_label(config.teacher),
        "method": ",".join(m.name for m in config.methods) or "none",
        "policy": config.policy.name,
        "dataset": config.data.name,
        "seed": str(config.seed),
    }
    if config.teacher is not None:
        tags.update(teacher_links(config.teacher.weights, config.tracking.uri))
    registry = get_registry()
    for kind, name in _used_plugins(config):
        entry = registry.entry(kind, name)
        if entry.source != "kdhub":
            tags[f"kdhub.plugin.{entry.source}"] = entry.version or "local"
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


def study_run_tags(study: str, run: str, grid: str, seed: int, parent_run_id: str) -> dict[str, str]:
    """Tags of a study's child run: nested under the parent, with the study, run name, grid point and seed.

    ``grid`` is the grid point's label (``temperature=4``, empty without a grid). The study's parent
    run takes ``{KIND_TAG: "study", "kdhub.study": study}``; its metrics go through
    :func:`safe_metric_name` (``compare/kd temperature 4/mean_delta_acc``).
    """
    return {
        "mlflow.parentRunId": parent_run_id,
        "kdhub.study": study,
        "kdhub.study_run": run,
        "kdhub.grid": grid or "none",
        "seed": str(seed),
    }


# the description of a run -----------------------------------------------------------------------


def _pct(value: Any) -> str:
    return f"{value:.2f} %" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def run_description(
    config: RunConfig,
    data: dict[str, dict[str, Any]] | None = None,
    metrics: dict[str, float] | None = None,
    *,
    teacher_run: tuple[str, str] | None = None,
    registered: str | None = None,
) -> str:
    """The run's description (Markdown): what was distilled into what, with which method, policy and
    data, and (given ``metrics``) the headline result; ``tracking.description`` replaces it.

    ``teacher_run`` is the teacher's (experiment id, run id), linked; ``registered`` is ``NAME/VERSION``.
    """
    if config.tracking.description:
        return config.tracking.description
    student, teacher = model_label(config.student), model_label(config.teacher)
    policy = model_label(config.policy)
    methods = []
    for ref in config.methods:
        weight = ref.weight if ref.weight is not None else _default_weight(ref.name)
        options = "".join(f", {k}={_option_text(v)}" for k, v in ref.options.items())
        methods.append(f"**{ref.name}** (weight {weight:g}{options})")
    if config.teacher is None:
        lines = [f"Trains **{student}** with cross-entropy only (no teacher), policy {policy}."]
    elif not methods:
        lines = [
            f"Trains **{student}** with cross-entropy; teacher **{teacher}** is attached for evaluation only"
            " (no distillation method)."
        ]
    else:
        lines = [
            f"Distils teacher **{teacher}** into student **{student}** with {', '.join(methods)}"
            f" and cross-entropy (weight {config.ce_weight:g}), policy **{policy}**."
        ]
    if metrics:
        result = f"**Result:** test accuracy **{_pct(metrics.get('test/acc_last'))}** after the last epoch"
        result += f" (highest seen {_pct(metrics.get('test/acc_max_seen'))}"
        if "test/acc_at_best_val" in metrics:
            epoch = metrics.get("best_val_epoch")
            at = f" epoch {int(epoch)}" if isinstance(epoch, (int, float)) and math.isfinite(epoch) else ""
            result += f"; {_pct(metrics['test/acc_at_best_val'])} at the best validation{at}"
        result += ")"
        if "test/accuracy/teacher_acc" in metrics:
            result += f"; teacher {_pct(metrics['test/accuracy/teacher_acc'])}"
        lines.append(result + ".")
    if config.teacher is not None and config.teacher.weights:
        where = f"Teacher weights: `{config.teacher.weights}`"
        if teacher_run is not None:
            where += f" ([teacher run {teacher_run[1][:8]}](#/experiments/{teacher_run[0]}/runs/{teacher_run[1]}))"
        lines.append(where + ".")
    elif config.teacher is not None:
        lines.append("Teacher weights: none (a randomly initialised teacher).")
    sizes = ""
    if data:
        counts = " / ".join(f"{info['num_samples']:,} {split}" for split, info in data.items())
        info = next(iter(data.values()))
        shape = "×".join(str(v) for v in info["shape"])
        sizes = f" ({counts} images, {shape}, {info['num_classes']} classes)"
    epochs = f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}"
    lines.append(
        f"Data: **{model_label(config.data)}**{sizes}; {epochs}, {config.optim.name} lr"
        f" {config.optim.lr:g}, {config.schedule.name} schedule, seed {config.seed}."
    )
    if registered:
        lines.append(f"Registered as `models:/{registered}`.")
    return "\n\n".join(lines)


# the engine's calls at the start and the end of a run ----------------------------------------------------


def _teacher_run(tracker: Tracker, config: RunConfig) -> tuple[str, str] | None:
    if config.teacher is None:
        return None
    run_id = teacher_links(config.teacher.weights, tracker.uri).get("kdhub.teacher_run")
    if not run_id:
        return None
    try:
        return tracker.client.get_run(run_id).info.experiment_id, run_id
    except Exception:
        return None


def _descriptions(data: Any) -> dict[str, dict[str, Any]]:
    return {split: data.describe(split) for split in ("train", "val", "test") if data.has(split)}


def log_run_start(tracker: Tracker, config: RunConfig, data: Any) -> None:
    """After the run is created: the splits as dataset inputs, the description, system metrics if asked."""
    descriptions = _descriptions(data)
    tracker.datasets(descriptions)
    if not tracker.resumed:
        tracker.describe(run_description(config, descriptions, teacher_run=_teacher_run(tracker, config)))
    if config.tracking.system_metrics:
        tracker.system_metrics()


def log_run_end(tracker: Tracker, config: RunConfig, data: Any, result: Any) -> dict[str, str]:
    """After training: the student as an MLflow model (and registry version), then the final description.

    Returns ``{"model_id": ..., "registered": "NAME/VERSION"}`` (what was done).
    """
    import kdhub
    from kdhub.export import model_checkpoint, network_from_checkpoint

    done: dict[str, str] = {}
    metrics = dict(result.metrics)
    if config.tracking.log_model and result.student is not None:
        checkpoint = model_checkpoint(result.student, config, data)
        net = network_from_checkpoint(checkpoint)
        example = data.example(2).detach().float().cpu().numpy()
        tags = {
            "student": model_label(config.student),
            "teacher": model_label(config.teacher),
            "method": ",".join(m.name for m in config.methods) or "none",
            "policy": config.policy.name,
            "dataset": config.data.name,
            "kdhub.version": kdhub.__version__,
        }
        metadata = {"kdhub": {**checkpoint["model_spec"], "run_id": tracker.run_id, "kdhub_version": kdhub.__version__}}
        try:
            model_id = tracker.log_model(
                net, example, checkpoint=checkpoint, metadata=metadata, tags=tags, step=config.epochs
            )
        except Exception as err:  # torch.export cannot trace every model (data-dependent control flow)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise KdhubError(
                f"tracking.log_model: the student {model_label(config.student)} could not be logged as an MLflow"
                f" model ({type(err).__name__}: {first}); its checkpoints are logged: resume with"
                f" --set tracking.log_model=false to finish the run without it"
            ) from err
        done["model_id"] = model_id
        tracker.tags({"kdhub.model": f"models:/{model_id}"})
        if config.tracking.register:
            acc = metrics.get("test/acc_last", math.nan)
            version_tags = {**tags, "test_acc": f"{acc:.2f}", "kdhub.run": str(tracker.run_id)}
            description = run_description(
                config, _descriptions(data), metrics, teacher_run=_teacher_run(tracker, config)
            )
            version = tracker.register_model(model_id, config.tracking.register, version_tags, description)
            done["registered"] = f"{config.tracking.register}/{version}"
            tracker.tags({"kdhub.registered_model": done["registered"]})
    text = run_description(  # tracking.description when set
        config,
        _descriptions(data),
        metrics,
        teacher_run=_teacher_run(tracker, config),
        registered=done.get("registered"),
    )
    tracker.describe(text)
    if "model_id" in done:
        tracker.client.set_logged_model_tags(done["model_id"], {_NOTE_TAG: text[:_MAX_TAG]})
    return done


# studies: finding and updating the runs of a study ------------------------------------------------


def store_exists(uri: str) -> bool:
    """False for a local store (SQLite file, ``mlruns`` folder) that was never created; True otherwise."""
    path = _sqlite_path(uri)
    if path is not None:
        return Path(path).exists()
    if uri.startswith("file:"):
        return Path(urlsplit(uri).path).exists()
    if "://" not in uri:
        return Path(uri).exists()
    return True


def find_runs(uri: str, experiment: str, filter_string: str = "") -> list[dict[str, Any]]:
    """Runs of an experiment matching an MLflow filter, oldest first, as plain dicts (none if it does not exist)."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs(
            [found.experiment_id],
            filter_string,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs += [
            {
                "run_id": r.info.run_id,
                "name": r.info.run_name,
                "status": r.info.status,
                "start_time": r.info.start_time,
                "end_time": r.info.end_time,
                "tags": dict(r.data.tags),
                "metrics": dict(r.data.metrics),
                "params": dict(r.data.params),
            }
            for r in page
        ]
        token = page.token
        if not token:
            return runs


def set_run_state(
    uri: str,
    run_id: str,
    status: str | None = None,
    tags: dict[str, str] | None = None,
    remove: list[str] | None = None,
) -> None:
    """Set tags, remove tags and end a run with ``status`` (FINISHED, FAILED, KILLED), or reopen it (RUNNING)."""
    client = _client(uri)
    existing = client.get_run(run_id).data.tags
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, str(value)[:5000])
    for key in remove or []:
        if key in existing:
            client.delete_tag(run_id, key)
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    elif status is not None:
        client.set_terminated(run_id, status=status)


def metric_max(uri: str, run_id: str, key: str) -> float:
    """The largest value a run logged for ``key`` over its steps (NaN if none)."""
    values = [m.value for m in _client(uri).get_metric_history(run_id, key) if math.isfinite(m.value)]
    return max(values) if values else math.nan


def delete_run(uri: str, run_id: str) -> None:
    """Move a run to MLflow's trash (``mlflow gc`` removes it for good)."""
    _client(uri).delete_run(run_id)
