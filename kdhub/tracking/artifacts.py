"""Reading runs back: confined ``runs:/`` and ``models:/`` references, tables, configs and run info."""

from __future__ import annotations

import json
import math
import posixpath
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdhub.contract.config_loading import read_yaml
from kdhub.contract.errors import KdhubError
from kdhub.contract.runlog import Table
from kdhub.tracking.store import MODEL_CHECKPOINT, _client, _existing_client, tracking_uri

if TYPE_CHECKING:
    pass  # config checks tracking's limits: no import at run time


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
    """Check that a file path, ``runs:/`` or ``models:/`` reference names an existing file, without
    downloading it; ``models:/`` names resolve in the registry of ``uri``'s store."""
    if reference.startswith("models:/"):
        _check_model(reference, tracking_uri(uri), where)
        return
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
        return _model_checkpoint(reference, uri, dest, where)
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


_MODEL_FORMS = "models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/latest or models:/<model id>"


def _model_version(reference: str, client: Any, uri: str = "", label: str = "") -> Any | None:
    """The registry version a ``models:/NAME/VERSION|latest`` or ``models:/NAME@ALIAS`` names (None: a model id).

    A missing registered model, version or alias is one line naming it (and what the store has).
    """
    label = label or reference
    body = reference[len("models:/") :].strip("/")
    if "@" not in body and "/" not in body:
        if not body:
            raise KdhubError(f"{label}: expected {_MODEL_FORMS}")
        return None
    by_alias = "@" in body
    name, version = body.split("@", 1) if by_alias else body.rsplit("/", 1)  # version: the alias when by_alias
    if not name or not version:
        raise KdhubError(f"{label}: expected {_MODEL_FORMS}")
    store = f" in {uri}" if uri else ""
    try:
        registered = client.get_registered_model(name)
    except Exception:
        raise KdhubError(f"{label}: no registered model {name!r}{store}{_close_models(client, name)}") from None
    if by_alias:
        alias = version
        aliases = dict(getattr(registered, "aliases", None) or {})
        if alias not in aliases:
            known = ", ".join(sorted(aliases)) or "none"
            raise KdhubError(f"{label}: registered model {name!r} has no alias {alias!r}{store} (its aliases: {known})")
        return client.get_model_version(name, str(aliases[alias]))
    try:
        quoted = name.replace("'", "\\'")
        versions = client.search_model_versions(f"name = '{quoted}'")
    except Exception:
        versions = []
    numbers = sorted(int(v.version) for v in versions)
    if version == "latest":
        if not versions:
            raise KdhubError(f"{label}: registered model {name!r} has no version{store}")
        return max(versions, key=lambda v: int(v.version))
    if not version.isdigit() or int(version) not in numbers:
        known = ", ".join(str(n) for n in numbers) or "none"
        raise KdhubError(
            f"{label}: registered model {name!r} has no version {version!r}{store} (its versions: {known})"
        )
    return client.get_model_version(name, str(int(version)))


def _close_models(client: Any, name: str) -> str:
    """``; did you mean ...?`` with registered models named like ``name``, or the empty string."""
    import difflib

    try:
        names = [m.name for m in client.search_registered_models(max_results=1000)]
    except Exception:
        return ""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _model_id(reference: str, client: Any, uri: str = "", label: str = "") -> tuple[str, Any | None]:
    label = label or reference
    version = _model_version(reference, client, uri, label)
    if version is None:
        return reference[len("models:/") :].strip("/"), None
    model_id = getattr(version, "model_id", None)
    if not model_id and str(version.source).startswith("models:/"):
        model_id = str(version.source)[len("models:/") :].split("/")[0]
    if not model_id:
        raise KdhubError(f"{label}: version {version.version} is not an MLflow 3 logged model ({version.source})")
    return model_id, version


def _logged_model(reference: str, uri: str, where: str) -> tuple[Any, Any, Any | None]:
    """(client, logged model, registry version or None) of a ``models:/`` reference; one-line errors."""
    label = f"{where}: {reference}" if where else reference
    client = _existing_client(uri, label)
    model_id, version = _model_id(reference, client, uri, label)
    try:
        model = client.get_logged_model(model_id)
    except Exception:
        raise KdhubError(f"{label}: no logged model {model_id!r} in {uri}") from None
    return client, model, version


def _check_model(reference: str, uri: str, where: str) -> None:
    """A ``models:/`` reference names an existing registry version or logged model holding a kdhub checkpoint."""
    client, model, _ = _logged_model(reference, uri, where)
    try:
        listed = {f.path for f in client.list_logged_model_artifacts(model.model_id, "extra_files")}
    except Exception:
        return  # listing is not supported by every artifact store: the download reports problems
    if f"extra_files/{MODEL_CHECKPOINT}" not in listed:
        label = f"{where}: {reference}" if where else reference
        raise KdhubError(
            f"{label}: model {model.model_id} holds no extra_files/{MODEL_CHECKPOINT}; kdhub loads weights"
            " only from students it logged"
        )


def _model_checkpoint(reference: str, uri: str | None, dest: Path, where: str = "") -> Path:
    """The kdhub checkpoint inside the model a ``models:/`` reference names, downloaded into ``dest``."""
    import mlflow

    resolved = tracking_uri(uri)
    label = f"{where}: {reference}" if where else reference
    _, model, _ = _logged_model(reference, resolved, where)
    location = f"{model.artifact_location.rstrip('/')}/extra_files/{MODEL_CHECKPOINT}"
    dest.mkdir(parents=True, exist_ok=True)
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dest), tracking_uri=resolved)
    except Exception:
        raise KdhubError(
            f"{label}: model {model.model_id} holds no extra_files/{MODEL_CHECKPOINT}; kdhub loads weights"
            " only from students it logged"
        ) from None
    local = Path(path).resolve()
    if not local.is_relative_to(dest.resolve()) or not local.is_file():
        raise KdhubError(f"{label}: the model's checkpoint resolves outside the download folder ({local}); refused")
    return local


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
