"""The Tracker: one MLflow run, written through (it implements :class:`kdhub.RunLog` for plugins)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdhub.contract.errors import KdhubError
from kdhub.contract.runlog import Table
from kdhub.tracking.artifacts import _get_run, _refuse_finished
from kdhub.tracking.failures import copy_atomically, local_artifact_folder, quiet_store_logs
from kdhub.tracking.heartbeat import (
    HEARTBEAT_TAG,
    HOST_TAG,
    PID_TAG,
    _Heartbeat,
    heartbeat_seconds,
    heartbeat_stamp,
)
from kdhub.tracking.runinfo import _global_uri, _safe_key, _source_tags
from kdhub.tracking.store import (
    _CONTEXT_TAG,
    _MAX_TAG,
    _NOTE_TAG,
    KIND_TAG,
    MODEL_CHECKPOINT,
    MODEL_NAME,
    _client,
    log,
    tracking_uri,
)
from kdhub.tracking.views import ensure_accuracy_view

if TYPE_CHECKING:
    pass  # config checks tracking's limits: no import at run time


DATASET_ATTEMPTS = 4
"""How often logging a run's datasets is tried while other runs create the same dataset rows."""


class Tracker:
    """Logs one run to MLflow (implements :class:`kdhub.RunLog` for plugins)."""

    def __init__(self, uri: str | None = None, experiment: str = "kdhub") -> None:
        self.uri = tracking_uri(uri)
        self.client = _client(self.uri)
        quiet_store_logs()
        self.experiment = experiment
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.run_name: str | None = None
        self._tables: set[str] = set()  # tables logged by this process (a second log replaces the first)
        self.resumed = False
        self._monitor: Any = None

    def start(
        self,
        run_name: str | None,
        tags: dict[str, str],
        resume_run_id: str | None = None,
        view_columns: Sequence[str] = (),
    ) -> str:
        """Create the run (with its command line, user and git commit) or reopen ``resume_run_id``; a training
        run's experiment gets the run list's "Accuracy" view, with ``view_columns`` (metric keys) in it."""
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
        if tags.get(KIND_TAG) == "train":  # the run list's "Accuracy" view (kdhub.tracking.views)
            ensure_accuracy_view(self.client, experiment_id, view_columns)
        return self.run_id

    def beat(self) -> None:
        """Record this process as the run's writer and keep its heartbeat tag fresh (a daemon thread)."""
        assert self.run_id is not None
        self.client.set_tag(self.run_id, HOST_TAG, socket.gethostname())
        self.client.set_tag(self.run_id, PID_TAG, str(os.getpid()))
        self.client.set_tag(self.run_id, HEARTBEAT_TAG, heartbeat_stamp())
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
        local = local_artifact_folder(self.client.get_run(self.run_id).info.artifact_uri)
        if local is None:
            self.client.log_artifact(self.run_id, str(path), folder)
        else:  # a full disk must not truncate the last good checkpoint: write beside it, then rename
            copy_atomically(Path(path), local / (folder or "") / Path(path).name)

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
        if not inputs:
            return
        for attempt in range(DATASET_ATTEMPTS):
            try:
                self.client.log_inputs(self.run_id, datasets=inputs)
                return
            except Exception as err:
                # MLflow finds or creates a dataset in two statements, so two runs logging the same new
                # dataset at once (a study's first runs) race: the loser's whole transaction is rolled
                # back, and trying again finds the winner's row and links to it
                if not _lost_dataset_race(err) or attempt == DATASET_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def log_model(
        self,
        net: Any,
        example: Any,
        *,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        tags: dict[str, str],
        step: int,
        name: str = MODEL_NAME,
    ) -> str:
        """Log ``net`` as the run's MLflow model ``name`` (pt2); returns its model id.

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
            name=name,
            source_run_id=self.run_id,
            tags={**inherited, **tags},
            params=dict(run.data.params),
        )
        # MLflow links a run's model itself (log_model(run_id=...)) but copies the run's metrics without their
        # datasets; kdhub links it (_link_model) unless a caller's fluent run is active, which MLflow would use
        link_here = mlflow.active_run() is None
        with tempfile.TemporaryDirectory(prefix="kdhub-model-") as tmp, self._failed_on_error(model.model_id):
            file = Path(tmp) / MODEL_CHECKPOINT
            torch.save(checkpoint, file)
            with _global_uri(self.uri), _requirements_as_given():
                mlflow.pytorch.log_model(
                    net,
                    name=name,
                    signature=signature,
                    input_example=example,
                    serialization_format="pt2",
                    pip_requirements=requirements,
                    extra_files=[str(file)],
                    metadata=metadata,
                    run_id=None if link_here else self.run_id,
                    model_id=model.model_id,
                    step=step,
                    # MLflow would reload the model it just wrote and predict the example (a warning if that
                    # fails); the network already ran on the example above, for the signature
                    validate_serving_input=False,
                )
        if link_here:
            self._link_model(str(model.model_id), step, run)
        return str(model.model_id)

    def _link_model(self, model_id: str, step: int, run: Any) -> None:
        """The model as the run's output and the run's metrics at ``step`` on it, as MLflow's ``log_model``
        links them, each with the dataset of its split (``test/acc_last``: the test split's input): the
        logged model's page lists those as its "Datasets used", which MLflow's own copy leaves empty."""
        from mlflow.entities import LoggedModelOutput, Metric

        self.client.log_outputs(self.run_id, models=[LoggedModelOutput(model_id, step)])
        splits: dict[str, Any] = {}
        for item in run.inputs.dataset_inputs:
            for tag in item.tags:
                if tag.key == _CONTEXT_TAG:
                    splits[tag.value] = item.dataset
        linked = []
        for key in run.data.metrics:
            dataset = splits.get(key.split("/", 1)[0])
            for m in self.client.get_metric_history(self.run_id, key):
                if m.step == step:  # the same timestamp as the run's metric: not logged on the run twice
                    named = {"dataset_name": dataset.name, "dataset_digest": dataset.digest} if dataset else {}
                    linked.append(
                        Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=self.run_id, **named)
                    )
        for i in range(0, len(linked), 900):
            self.client.log_batch(self.run_id, metrics=linked[i : i + 900])

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

    def register_model(
        self, model_id: str, name: str, tags: dict[str, str], description: str, model_description: str = ""
    ) -> str:
        """Register a logged model as a new version of ``name`` (created with ``model_description`` when
        new); returns the version number."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description=model_description or None)
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


_REQUIREMENTS_CHECK = threading.Lock()


def _lost_dataset_race(err: BaseException) -> bool:
    """Whether ``err`` is another run creating the same dataset row first (SQLite's or a server database's words)."""
    text = str(err).lower()
    return ("unique constraint" in text or "duplicate key" in text) and "dataset" in text


def _no_requirements_check(model_requirements: list[str]) -> None:
    """Stands in for MLflow's check of a model's requirements against the installed distributions."""


@contextmanager
def _requirements_as_given() -> Iterator[None]:
    """Log a model without MLflow checking its pip requirements against what is installed.

    kdhub gives the exact versions of the distributions running this process (torch, mlflow), so the
    check cannot find a mismatch; it costs a scan of every installed distribution's files (about a
    second of CPU) the first time a process logs a model. An MLflow without the check is left alone.
    """
    from mlflow.utils import environment

    with _REQUIREMENTS_CHECK:  # one model at a time per process while the check is swapped out
        check = getattr(environment, "warn_dependency_requirement_mismatches", None)
        if check is None:
            yield
            return
        environment.warn_dependency_requirement_mismatches = _no_requirements_check
        try:
            yield
        finally:
            environment.warn_dependency_requirement_mismatches = check


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
