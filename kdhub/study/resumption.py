"""What earlier invocations of a study left in MLflow, and what to do with each planned run.

Rerunning a study continues it under the same parent run: each run is matched by name, grid point
and seed (the tag ``kdhub.study.key``); a finished run is kept, an interrupted one resumes from its
``last.pt`` (or starts again when it never wrote one), a failed one runs again (the old MLflow run
is tagged ``kdhub.study.superseded``). A finished run whose config changed since is refused
(``--fresh`` starts a new parent run instead); so is a search whose searched run changed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdhub.contract.errors import ConfigError, KdhubError
from kdhub.study.aggregate import ACCURACIES
from kdhub.study.spec import PlannedRun, StudyConfig, config_hash
from kdhub.study.worker import KEY_TAG
from kdhub.tracking import PID_TAG, find_runs, liveness, metric_max, system_tag
from kdhub.tracking import tracking_uri as default_uri

__all__ = ["Entry", "absolute_uri", "classify", "find_children", "find_parent"]

STUDY_TAG = "kdhub.study"
ROLE_TAG = "kdhub.study.role"
HASH_TAG = "kdhub.study.config"
POINT_TAG = "kdhub.study.point"
TRIAL_TAG = "kdhub.study.trial"
SUPERSEDED_TAG = "kdhub.study.superseded"
INVOCATION_TAG = "kdhub.study.invocation"


# the store ----------------------------------------------------------------------------------------


def absolute_uri(uri: str) -> str:
    """A tracking URI every worker reads the same way: local paths made absolute."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri and not uri.startswith("file:"):
        return str(Path(uri).resolve())
    return uri


def _study_uri(study: StudyConfig, tracking_uri: str | None) -> str:
    configured = study.base.get("tracking", {}).get("uri") if isinstance(study.base.get("tracking"), dict) else None
    return absolute_uri(default_uri(tracking_uri or configured))


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def find_parent(uri: str, study: StudyConfig) -> dict[str, Any] | None:
    try:
        parents = find_runs(
            uri,
            study.experiment,
            f"tags.`{STUDY_TAG}` = '{_quote(study.name)}' and tags.`{ROLE_TAG}` = 'parent'",
        )
    except KdhubError:
        raise
    except Exception as err:
        raise KdhubError(f"tracking URI {uri}: cannot read the MLflow store: {str(err).splitlines()[0]}") from None
    return parents[-1] if parents else None


def find_children(uri: str, study: StudyConfig, parent_id: str) -> list[dict[str, Any]]:
    return find_runs(uri, study.experiment, f"tags.mlflow.parentRunId = '{parent_id}'")


def _alive(parent: dict[str, Any]) -> str | None:
    """Who is running the parent run now, if its study process is alive (its heartbeat is fresh)."""
    if parent["status"] != "RUNNING":
        return None
    alive, why = liveness(parent)
    if not alive or system_tag(parent["tags"], PID_TAG) == str(os.getpid()):
        return None
    return why


# the state of every run in this invocation --------------------------------------------------------


@dataclass
class Entry:
    run: PlannedRun
    state: str = "pending"  # pending, running, finished, failed, skipped; trials also pruned
    run_id: str | None = None
    earlier: bool = False  # finished in an earlier invocation
    resume_id: str | None = None
    supersede: dict[str, Any] | None = None  # an earlier MLflow run of this key that is redone
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    input_error: bool = False
    detail: str = ""
    seconds: float = 0.0
    value: float | None = None


def _latest(children: list[dict[str, Any]], role: str) -> dict[str, dict[str, Any]]:
    by_key: dict[str, dict[str, Any]] = {}
    for child in children:  # oldest first: the latest run of a key wins
        tags = child["tags"]
        if tags.get(ROLE_TAG) == role and SUPERSEDED_TAG not in tags and KEY_TAG in tags:
            by_key[tags[KEY_TAG]] = child
    return by_key


def classify(plan: list[PlannedRun], children: list[dict[str, Any]], uri: str) -> list[Entry]:
    """What to do with every planned run given the runs an earlier invocation left."""
    earlier = _latest(children, "run")
    entries, conflicts = [], []
    for run in plan:
        entry = Entry(run)
        old = earlier.get(run.key)
        if old is not None:
            same = old["tags"].get(HASH_TAG) == run.hash
            if old["status"] == "FINISHED":
                if same:
                    entry.state, entry.earlier, entry.run_id = "finished", True, old["run_id"]
                    entry.metrics = dict(old["metrics"])
                    if ACCURACIES["best"] not in entry.metrics:  # not logged: the best of the test history
                        entry.metrics[ACCURACIES["best"]] = metric_max(uri, old["run_id"], "test/acc")
                else:
                    conflicts.append(f"{run.display} (run {old['run_id']})")
            elif old["status"] in ("RUNNING", "KILLED", "SCHEDULED") and same:
                # from its last.pt, or from scratch in the same MLflow run when it never wrote one
                entry.resume_id = old["run_id"]
            else:
                entry.supersede = old
        entries.append(entry)
    if conflicts:
        more = f" and {len(conflicts) - 1} more" if len(conflicts) > 1 else ""
        raise ConfigError(
            f"runs: {conflicts[0]}{more} finished with a different config than the study now gives; undo the "
            "change to continue the study, or add --fresh to start it over under a new parent run"
        )
    return entries


def _template_hash(template: PlannedRun, study: StudyConfig) -> str:
    assert study.search is not None
    spec = study.search.model_dump(mode="json", exclude={"trials", "timeout", "storage"})
    return config_hash({"run": template.config, "search": spec})


def _check_template(template: PlannedRun, study: StudyConfig, children: list[dict[str, Any]]) -> None:
    digest = _template_hash(template, study)
    for child in children:
        tags = child["tags"]
        if tags.get(ROLE_TAG) == "trial" and tags.get(HASH_TAG) != digest and SUPERSEDED_TAG not in tags:
            raise ConfigError(
                f"search: the searched run or the search changed since trial {tags.get(TRIAL_TAG)} "
                f"(run {child['run_id']}); undo the change to continue the search, or add --fresh to start over"
            )
