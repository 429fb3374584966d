"""Studies: sets of runs (a list, grids, repeats over seeds) logged as nested MLflow runs under one parent.

A later run may use an earlier run of the same study (same seed) as its teacher by writing
``${<run name>}`` where a run id goes: ``teacher.weights: runs:/${teacher}/checkpoints/final.pt``.
An optional ``compare:`` section compares runs with a baseline run per class after the runs
(the ``compare`` command's comparison, seeds averaged), logged as runs nested under the study.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdhub.config import apply_overrides, parse_config, read_yaml, resolve_plugins
from kdhub.errors import ConfigError
from kdhub.plugins import get_registry
from kdhub.registry import format_validation_error
from kdhub.tables import PER_CLASS_ACCURACY

__all__ = ["StudyCompare", "StudyConfig", "StudyRun", "expand", "load_study", "run_study"]

_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_\-]+)\}")


class StudyRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", description="run name, unique in the study")
    set: dict[str, Any] = Field(default_factory=dict, description="config values merged over the base")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted path -> values; every combination runs"
    )


class StudyCompare(BaseModel):
    model_config = ConfigDict(extra="forbid")

    baseline: str = Field(description="name of the baseline run (no grid); its seeds are averaged")
    runs: list[str] = Field(
        min_length=1, description="names of the runs compared with the baseline, each (and each grid point) on its own"
    )
    split: Literal["train", "val", "test"] = Field("test", description="split of the per-class tables")
    tol: float = Field(0.0, ge=0, description="a class is undistillable iff its ΔACC < -tol (accuracy points)")


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="study name (the parent MLflow run)")
    experiment: str = Field("kdhub-studies", min_length=1, description="MLflow experiment")
    base: dict[str, Any] = Field(default_factory=dict, description="run config shared by every run")
    runs: list[StudyRun] = Field(min_length=1, description="the runs, in order (later runs may reference earlier ones)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="every run repeats for each seed")
    compare: StudyCompare | None = Field(
        None, description="per-class comparison of runs with a baseline, after the runs"
    )


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    data = read_yaml(path, "study file") or {}  # kdhub's safe loader: no tags, no alias bombs
    try:
        study = StudyConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, StudyConfig)) from None
    if overrides:
        study = study.model_copy(update={"base": apply_overrides(study.base, overrides)})
    names = [r.name for r in study.runs]
    if len(set(names)) != len(names):
        raise ConfigError("runs: run names must be unique")
    return study


def _merge(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        return {k: _merge(base[k], v) if k in base else v for k, v in {**base, **top}.items()}
    return top


def expand(study: StudyConfig) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(run name, grid point label, seed, config dict) for every run of the study, in order."""
    expanded = []
    for seed in study.seeds:
        for entry in study.runs:
            keys = list(entry.grid)
            for values in itertools.product(*(entry.grid[k] for k in keys)) if keys else [()]:
                label = ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values, strict=True))
                config = _merge(study.base, entry.set)
                config = apply_overrides(
                    config, [f"{k}={yaml.safe_dump(v).strip()}" for k, v in zip(keys, values, strict=True)]
                )
                config["seed"] = seed
                expanded.append((entry.name, label, seed, config))
    for position, (name, label, _, config) in enumerate(expanded):
        try:
            resolve_plugins(parse_config(config), get_registry())
        except ConfigError as err:
            raise ConfigError(f"runs.{name}{f'[{label}]' if label else ''}: {err}") from None
        earlier = {n for n, *_ in expanded[:position]}
        for ref in _REFERENCE.findall(yaml.safe_dump(config)):
            if ref not in earlier:
                raise ConfigError(f"runs.{name}: ${{{ref}}} names no earlier run of the study")
    if study.compare is not None:
        _check_compare(study.compare, study, expanded)
    return expanded


def _check_compare(spec: StudyCompare, study: StudyConfig, expanded: list[tuple[str, str, int, dict]]) -> None:
    table = PER_CLASS_ACCURACY
    registry = get_registry()
    by_name = {r.name: r for r in study.runs}
    for where, name in [("compare.baseline", spec.baseline)] + [
        (f"compare.runs.{i}", n) for i, n in enumerate(spec.runs)
    ]:
        if name not in by_name:
            raise ConfigError(f"{where}: {name!r} names no run of the study")
        # the metric of the same name logs the table the comparison reads
        config = parse_config(next(c for n, _, _, c in expanded if n == name))
        if not any(table in registry.get("metric", m.name).tables and m.split == spec.split for m in config.metrics):
            raise ConfigError(
                f"{where}: run {name!r} has no metric logging the {table.name} table on split {spec.split!r};"
                f" add {{name: {table.name}, split: {spec.split}}} to its metrics"
            )
    if by_name[spec.baseline].grid:
        raise ConfigError(f"compare.baseline: run {spec.baseline!r} has a grid; a baseline must be one run")
    if spec.baseline in spec.runs:
        raise ConfigError(f"compare.runs: {spec.baseline!r} is the baseline")


def _substitute(config: Any, run_ids: dict[str, str]) -> Any:
    if isinstance(config, dict):
        return {k: _substitute(v, run_ids) for k, v in config.items()}
    if isinstance(config, list):
        return [_substitute(v, run_ids) for v in config]
    if isinstance(config, str):
        return _REFERENCE.sub(lambda m: run_ids.get(m.group(1), m.group(0)), config)
    return config


def run_study(study: StudyConfig, tracking_uri: str | None = None) -> dict[str, Any]:
    """Run every run of the study under one parent MLflow run; returns the parent id and a summary table."""
    from kdhub.engine.loop import run
    from kdhub.tracking import Tracker

    plan = expand(study)
    parent = Tracker(tracking_uri, study.experiment)
    parent_id = parent.start(study.name, {"kdhub.study": study.name})
    parent.text("study.yaml", yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False))
    summary: dict[str, list[Any]] = {
        "run": [],
        "grid": [],
        "seed": [],
        "run_id": [],
        "test_acc_last": [],
        "test_acc_best": [],
    }
    run_ids: dict[int, dict[str, str]] = {}
    try:
        for name, label, seed, raw in plan:
            config = _substitute(raw, run_ids.setdefault(seed, {}))
            tracking = config.setdefault("tracking", {})
            tracking.update(uri=parent.uri, experiment=study.experiment)
            tracking["run_name"] = f"{name}{f'[{label}]' if label else ''}-s{seed}"
            tracking["tags"] = {**tracking.get("tags", {}), "mlflow.parentRunId": parent_id, "kdhub.study": study.name}
            result = run(parse_config(config))
            assert result.run_id is not None  # a tracked run
            run_ids[seed].setdefault(name, result.run_id)
            for key, value in (
                ("run", name),
                ("grid", label),
                ("seed", seed),
                ("run_id", result.run_id),
                ("test_acc_last", result.last_acc),
                ("test_acc_best", result.best_acc),
            ):
                summary[key].append(value)
        comparisons = _compare(study, summary, parent, parent_id)
    except BaseException as err:
        parent.table("study_summary", summary)
        parent.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", f"{type(err).__name__}: {err}")
        raise
    parent.table("study_summary", summary)
    parent.finish("FINISHED")
    return {"parent_run_id": parent_id, "summary": summary, "run_ids": run_ids, "comparisons": comparisons}


def _compare(study: StudyConfig, summary: dict[str, list[Any]], parent: Any, parent_id: str) -> dict[str, Any]:
    """One comparison per compared run (per grid point), all seeds averaged, nested under the parent run."""
    spec = study.compare
    if spec is None:
        return {}
    comparer: Any = get_registry().create("command", "compare")  # the command plugin that compares runs
    rows = list(zip(summary["run"], summary["grid"], summary["run_id"], strict=True))
    baseline = [run_id for name, _, run_id in rows if name == spec.baseline]
    comparisons = {}
    for name in spec.runs:
        for label in dict.fromkeys(lab for n, lab, _ in rows if n == name):
            key = f"{name}[{label}]" if label else name
            comparison = comparer.compare(
                baseline,
                [run_id for n, lab, run_id in rows if n == name and lab == label],
                uri=parent.uri,
                split=spec.split,
                tol=spec.tol,
                experiment=study.experiment,
                run_name=f"compare-{key}-vs-{spec.baseline}",
                tags={"mlflow.parentRunId": parent_id, "kdhub.study": study.name},
            )
            scalars = {f"compare/{key}/{k}": v for k, v in comparison.scalars().items() if math.isfinite(v)}
            parent.metrics(scalars, step=0)
            comparisons[key] = comparison
    return comparisons
