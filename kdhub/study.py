"""Studies: sets of runs (a list, grids, repeats over seeds) logged as nested MLflow runs under one parent.

A later run may use an earlier run of the same study (same seed) as its teacher by writing
``${<run name>}`` where a run id goes: ``teacher.weights: runs:/${teacher}/checkpoints/final.pt``.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdhub.config import apply_overrides, parse_config, resolve_plugins
from kdhub.errors import ConfigError
from kdhub.plugins import get_registry
from kdhub.registry import format_validation_error

__all__ = ["StudyConfig", "StudyRun", "load_study", "expand", "run_study"]

_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_\-]+)\}")


class StudyRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", description="run name, unique in the study")
    set: dict[str, Any] = Field(default_factory=dict, description="config values merged over the base")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted path -> values; every combination runs"
    )


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="study name (the parent MLflow run)")
    experiment: str = Field("kdhub-studies", min_length=1, description="MLflow experiment")
    base: dict[str, Any] = Field(default_factory=dict, description="run config shared by every run")
    runs: list[StudyRun] = Field(min_length=1, description="the runs, in order (later runs may reference earlier ones)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="every run repeats for each seed")


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{path}: no such study file")
    try:
        data = yaml.safe_load(file.read_text()) or {}
        study = StudyConfig.model_validate(data)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}".replace("\n", " ")) from None
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
    return expanded


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
    except BaseException as err:
        parent.table("study_summary", summary)
        parent.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", f"{type(err).__name__}: {err}")
        raise
    parent.table("study_summary", summary)
    parent.finish("FINISHED")
    return {"parent_run_id": parent_id, "summary": summary, "run_ids": run_ids}
