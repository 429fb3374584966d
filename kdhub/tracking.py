"""MLflow tracking: the only module that imports mlflow."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from kdhub.config import RunConfig
from kdhub.errors import KdhubError
from kdhub.plugins import get_registry, loaded_plugins
from kdhub.runlog import Table

__all__ = [
    "DEFAULT_URI",
    "Tracker",
    "artifact_exists",
    "delete_run",
    "find_runs",
    "flatten",
    "load_run_config",
    "load_table",
    "resolve_artifact",
    "run_info",
    "set_run_state",
    "store_exists",
    "tracking_uri",
]

DEFAULT_URI = "sqlite:///mlflow.db"
_KEY = re.compile(r"[^0-9A-Za-z_\-. /]")


def tracking_uri(configured: str | None = None) -> str:
    """The config's URI, else $MLFLOW_TRACKING_URI, else a local SQLite store ``mlflow.db``."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _client(uri: str) -> Any:
    import logging

    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    client = mlflow.MlflowClient(tracking_uri=uri)
    return _RetryWhenLocked(client) if uri.startswith("sqlite:") else client


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
            import time

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


def _safe_key(key: str) -> str:
    return _KEY.sub("_", key)


class Tracker:
    """Logs one run to MLflow (implements :class:`kdhub.RunLog` for plugins)."""

    def __init__(self, uri: str | None = None, experiment: str = "kdhub") -> None:
        self.uri = tracking_uri(uri)
        self.client = _client(self.uri)
        self.experiment = experiment
        self.run_id: str | None = None
        self._step: int | None = None

    def start(self, run_name: str | None, tags: dict[str, str], resume_run_id: str | None = None) -> str:
        if resume_run_id:
            run = self.client.get_run(resume_run_id)
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "kdhub.resumed", "true")
            return self.run_id
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        return self.run_id

    def at_step(self, step: int | None) -> None:
        """The default step (epoch) for values logged by plugins without one."""
        self._step = step

    # RunLog -----------------------------------------------------------------------------------
    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = self._step if step is None else step
        items = [
            Metric(_safe_key(k), float(v), now, step or 0)
            for k, v in values.items()
            if v is not None and not (isinstance(v, float) and math.isinf(v))
        ]
        for i in range(0, len(items), 900):
            self.client.log_batch(self.run_id, metrics=items[i : i + 900])

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
        columns = list(data)
        rows = [list(r) for r in zip(*(data[c] for c in columns), strict=True)]
        payload = {"columns": columns, "data": [[_jsonable(v) for v in row] for row in rows]}
        self.client.log_dict(self.run_id, payload, f"tables/{name}.json")

    def figure(self, name: str, figure: Any) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, figure, f"figures/{name}.png")
        plt.close(figure)

    def text(self, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, name)

    # files ------------------------------------------------------------------------------------
    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if reason:
            self.client.set_tag(self.run_id, "kdhub.failure", reason[:5000])
        self.client.set_terminated(self.run_id, status=status)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def resolve_artifact(reference: str, uri: str | None = None) -> Path:
    """A local path for a file path or an MLflow ``runs:/<run_id>/<artifact path>`` reference."""
    if not reference.startswith("runs:/"):
        path = Path(reference).expanduser()
        if not path.exists():
            raise KdhubError(f"{reference}: no such file")
        return path
    parts = reference[len("runs:/") :].split("/", 1)
    if len(parts) != 2 or not parts[1]:
        raise KdhubError(f"{reference}: expected runs:/<run_id>/<artifact path>")
    client = _client(tracking_uri(uri))
    try:
        return Path(client.download_artifacts(parts[0], parts[1], tempfile.mkdtemp(prefix="kdhub-")))
    except Exception as err:
        raise KdhubError(f"{reference}: cannot fetch from {tracking_uri(uri)}: {str(err).splitlines()[0]}") from None


def load_table(run_id: str, name: str, uri: str | None = None) -> Table:
    """A table a run logged with ``RunLog.table`` (e.g. ``test/per_class_accuracy``), as columns."""
    path = resolve_artifact(f"runs:/{run_id}/tables/{name}.json", uri)
    payload = json.loads(path.read_text())
    columns = payload["columns"]
    return {c: [row[i] if row[i] is not None else math.nan for row in payload["data"]] for i, c in enumerate(columns)}


def load_run_config(run_id: str, uri: str | None = None) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(resolve_artifact(f"runs:/{run_id}/config.yaml", uri).read_text())


def run_info(run_id: str, uri: str | None = None) -> dict[str, Any]:
    """Status, name, experiment (id and name), tags, params and latest metrics of a run."""
    client = _client(tracking_uri(uri))
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
    for i, ref in enumerate(config.metrics):
        values = {"split": ref.split, "every": ref.every, **options[f"metrics.{i}"].model_dump(mode="json")}
        params.update(flatten(values, f"metric.{ref.name}"))
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


# studies: finding and updating the runs of a study ------------------------------------------------


def store_exists(uri: str) -> bool:
    """False for a local store (SQLite file, ``mlruns`` folder) that was never created; True otherwise."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :].split("?")[0]).exists()
    if uri.startswith("file:"):
        from urllib.parse import urlparse

        return Path(urlparse(uri).path).exists()
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


def artifact_exists(uri: str, run_id: str, path: str) -> bool:
    folder, _, _ = path.rpartition("/")
    try:
        return any(f.path == path for f in _client(uri).list_artifacts(run_id, folder or None))
    except Exception:
        return False


def set_run_state(
    uri: str,
    run_id: str,
    status: str | None = None,
    tags: dict[str, str] | None = None,
    remove: list[str] | None = None,
) -> None:
    """Set tags, remove tags and end a run with ``status`` (FINISHED, FAILED, KILLED)."""
    client = _client(uri)
    existing = client.get_run(run_id).data.tags
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, str(value)[:5000])
    for key in remove or []:
        if key in existing:
            client.delete_tag(run_id, key)
    if status is not None:
        client.set_terminated(run_id, status=status)


def delete_run(uri: str, run_id: str) -> None:
    """Move a run to MLflow's trash (``mlflow gc`` removes it for good)."""
    _client(uri).delete_run(run_id)
