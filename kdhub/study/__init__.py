"""Studies: sets of runs (a list, grids, repeats over seeds, a search) logged as nested MLflow runs under one parent.

A later run may use an earlier run of the same study as its teacher by writing ``${<run name>}``
where a run id goes: ``teacher.weights: runs:/${teacher}/checkpoints/final.pt`` (the run of the same
seed, or the only run of a ``shared: true`` run; ``${teacher[width=16]}`` names a grid point).
Runs execute in this process one after another (``executor="local"``) or as Ray tasks
(``executor="ray"``), each as soon as the runs it references have finished. An optional
``compare:`` section compares runs with a baseline per class after the runs; a ``search:``
section searches the config of one run with Optuna. Rerunning a study continues it.
See docs/studies.md.
"""

from __future__ import annotations

from kdhub.study.plan import count_runs, expand
from kdhub.study.reporting import study_status
from kdhub.study.runner import run_study
from kdhub.study.spec import (
    PlannedRun,
    Resources,
    SearchSpec,
    StudyCompare,
    StudyConfig,
    StudyRun,
    load_study,
    parse_study,
)

__all__ = [
    "PlannedRun",
    "Resources",
    "SearchSpec",
    "StudyCompare",
    "StudyConfig",
    "StudyRun",
    "count_runs",
    "expand",
    "load_study",
    "parse_study",
    "run_study",
    "study_status",
]
