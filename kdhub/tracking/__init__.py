"""MLflow tracking: the only package of kdhub that imports mlflow.

What a run records (docs/mlflow.md): params that apply to it, tags naming its models and plugins,
a description, its command line and git commit, the train / val / test splits as dataset inputs,
per-epoch metrics, tables (MLflow tables) and figures, checkpoints, and at the end the student as an
MLflow model (optionally registered).

- :mod:`~kdhub.tracking.store`: URIs, MLflow's limits, clients safe on first use and under concurrency;
- :mod:`~kdhub.tracking.tracker`: the :class:`Tracker` that writes one run;
- :mod:`~kdhub.tracking.runinfo`: the params, tags and names a run is logged with;
- :mod:`~kdhub.tracking.artifacts`: reading runs back (confined references, tables, configs);
- :mod:`~kdhub.tracking.lifecycle`: datasets, description and the student as a model, around training;
- :mod:`~kdhub.tracking.heartbeat`: heartbeats and stale runs;
- :mod:`~kdhub.tracking.studies`: finding and updating the runs of a study;
- :mod:`~kdhub.tracking.views`: the run list's saved view with the accuracy columns.
"""

from __future__ import annotations

from kdhub.contract.limits import (
    MAX_EXPERIMENT_NAME_LENGTH,
    MAX_RUN_NAME_LENGTH,
    MAX_TAG_KEY_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    tag_problem,
    uri_problem,
)
from kdhub.tracking.artifacts import (
    artifact_exists,
    check_reference,
    check_resumable,
    load_run_config,
    load_table,
    logged_model_of_run,
    resolve_artifact,
    resolve_weights,
    run_info,
    teacher_links,
)
from kdhub.tracking.heartbeat import (
    HEARTBEAT_TAG,
    HOST_TAG,
    PID_TAG,
    STALE_BEATS,
    heartbeat_seconds,
    heartbeat_stamp,
    liveness,
    running_runs,
    system_tag,
)
from kdhub.tracking.lifecycle import (
    log_run_end,
    log_run_start,
    run_description,
)
from kdhub.tracking.runinfo import (
    command_line,
    compare_experiment,
    default_run_name,
    flatten,
    git_tags,
    model_label,
    run_params,
    run_tags,
    safe_metric_name,
    source_name,
    study_run_tags,
)
from kdhub.tracking.store import (
    DEFAULT_URI,
    KIND_TAG,
    MODEL_CHECKPOINT,
    MODEL_NAME,
    PROBE_TIMEOUT_S,
    tracking_uri,
)
from kdhub.tracking.studies import (
    delete_run,
    find_runs,
    metric_max,
    set_run_state,
    store_exists,
)
from kdhub.tracking.tracker import (
    Tracker,
)
from kdhub.tracking.views import (
    ACCURACY_COLUMNS,
    VIEW_KEY,
    VIEW_NAME,
    accuracy_view_url,
)

__all__ = [
    "ACCURACY_COLUMNS",
    "DEFAULT_URI",
    "HEARTBEAT_TAG",
    "HOST_TAG",
    "KIND_TAG",
    "MAX_EXPERIMENT_NAME_LENGTH",
    "MAX_RUN_NAME_LENGTH",
    "MAX_TAG_KEY_LENGTH",
    "MAX_TAG_VALUE_LENGTH",
    "MODEL_CHECKPOINT",
    "MODEL_NAME",
    "PID_TAG",
    "PROBE_TIMEOUT_S",
    "STALE_BEATS",
    "VIEW_KEY",
    "VIEW_NAME",
    "Tracker",
    "accuracy_view_url",
    "artifact_exists",
    "check_reference",
    "check_resumable",
    "command_line",
    "compare_experiment",
    "default_run_name",
    "delete_run",
    "find_runs",
    "flatten",
    "git_tags",
    "heartbeat_seconds",
    "heartbeat_stamp",
    "liveness",
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
    "run_params",
    "run_tags",
    "running_runs",
    "safe_metric_name",
    "set_run_state",
    "source_name",
    "store_exists",
    "study_run_tags",
    "system_tag",
    "tag_problem",
    "teacher_links",
    "tracking_uri",
    "uri_problem",
]
