"""The study file: its pydantic model (as strict as a run config's) and loading; the planned run.

The expansion into planned runs, and its checks, are in :mod:`kdhub.study.plan`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from kdhub.contract.base import StrictModel
from kdhub.contract.config_loading import apply_overrides, read_yaml
from kdhub.contract.errors import ConfigError
from kdhub.contract.validation import format_validation_error

__all__ = [
    "ChoiceParam",
    "FloatParam",
    "IntParam",
    "PlannedRun",
    "Resources",
    "SearchSpec",
    "StudyCompare",
    "StudyConfig",
    "StudyRun",
    "config_hash",
    "load_study",
]

NAME = r"[A-Za-z0-9_\-]+"
# ${teacher} or ${teacher[width=16]} (a grid point of a run with a grid)
REFERENCE = re.compile(r"\$\{(" + NAME + r")(?:\[([^\[\]{}$]*)\])?\}")


class _Strict(StrictModel):
    """Unknown keys, NaN and infinities, and booleans for numbers are refused, as in a run config."""


class Resources(_Strict):
    """What one run needs from the Ray executor (ignored by the local executor)."""

    cpus: float = Field(1.0, gt=0, le=1024, description="CPU cores per run; the run uses this many torch threads")
    gpus: float | None = Field(
        None,
        ge=0,
        le=64,
        description="GPUs per run (fractions share a GPU); default 1 where the cluster has GPUs, else 0",
    )


def _unique(values: list[Any], what: str) -> list[Any]:
    seen: set[str] = set()
    for value in values:
        key = json.dumps(value, sort_keys=True, default=str)
        if key in seen:
            raise ValueError(f"{what} {value!r} is listed twice")
        seen.add(key)
    return values


class StudyRun(_Strict):
    name: str = Field(pattern=rf"^{NAME}$", max_length=100, description="run name, unique in the study")
    set: dict[str, Any] = Field(default_factory=dict, description="config values merged over the base")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted path -> values; every combination runs"
    )
    seeds: list[int] | None = Field(None, min_length=1, description="seeds of this run (default: the study's seeds)")
    shared: bool = Field(
        False, description="run once, with the study's first seed, and serve every seed (e.g. a teacher)"
    )
    resources: Resources | None = Field(None, description="per-run resources (default: the study's)")

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"{key}: a grid needs at least one value")
            _unique(values, f"{key}: value")
        return grid

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None:
            _unique(seeds, "seed")
            if any(s < 0 for s in seeds):
                raise ValueError("seeds must be >= 0")
        return seeds

    @model_validator(mode="after")
    def _shared(self) -> StudyRun:
        if self.shared and self.seeds is not None:
            raise ValueError("give either shared: true or seeds, not both")
        return self


class StudyCompare(_Strict):
    baseline: str = Field(description="name of the baseline run; its seeds are averaged")
    runs: list[str] = Field(
        min_length=1, description="names of the runs compared with the baseline, each (and each grid point) on its own"
    )
    split: Literal["train", "val", "test"] = Field("test", description="split of the per-class tables")
    tol: float = Field(0.0, ge=0, description="a class is undistillable iff its ΔACC < -tol (accuracy points)")
    match: list[str] = Field(
        default_factory=list,
        description="config paths (e.g. student.options.width): each grid point is compared with the baseline "
        "point whose values agree on them",
    )


class FloatParam(_Strict):
    type: Literal["float"] = Field(description="a float in [low, high]")
    low: float = Field(description="lower bound (inclusive)")
    high: float = Field(description="upper bound (inclusive)")
    log: bool = Field(False, description="sample on a log scale (low > 0)")
    step: float | None = Field(None, gt=0, description="discretisation step (needed by the grid sampler)")

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"need finite low < high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("give log or step, not both")
        return self

    def grid(self) -> list[Any]:
        if self.step is None:
            raise ValueError("the grid sampler needs a step (or choices)")
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]


class IntParam(_Strict):
    type: Literal["int"] = Field(description="an integer in [low, high]")
    low: int = Field(description="lower bound (inclusive)")
    high: int = Field(description="upper bound (inclusive)")
    log: bool = Field(False, description="sample on a log scale (low >= 1)")
    step: int = Field(1, ge=1, description="step between values")

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if self.low >= self.high:
            raise ValueError(f"need low < high, got [{self.low}, {self.high}]")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log scale needs low >= 1 and step 1")
        return self

    def grid(self) -> list[Any]:
        return list(range(self.low, self.high + 1, self.step))


class ChoiceParam(_Strict):
    type: Literal["choice"] = Field(description="one of the choices")
    choices: list[Union[str, int, float, bool, None]] = Field(min_length=1, description="the values")

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[Any]) -> list[Any]:
        return _unique(choices, "choice")

    def grid(self) -> list[Any]:
        return list(self.choices)


def _param_type(value: Any) -> Any:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


# a callable discriminator: a field discriminator would refuse the strict base's check of every field
Param = Annotated[
    Union[Annotated[FloatParam, Tag("float")], Annotated[IntParam, Tag("int")], Annotated[ChoiceParam, Tag("choice")]],
    Discriminator(
        _param_type,
        custom_error_type="param_type",
        custom_error_message="type must be float, int or choice",
    ),
]


class SearchSpec(_Strict):
    """A hyper-parameter search with Optuna over the config of one run of the study."""

    run: str = Field(description="the run whose config every trial starts from (it is not run on its own)")
    space: dict[str, Param] = Field(min_length=1, description="config path -> {type: float|int|choice, ...}")
    objective: str = Field("val/acc", min_length=1, description="a metric logged every epoch (never a test metric)")
    direction: Literal["maximize", "minimize"] = Field("maximize", description="maximize or minimize the objective")
    reduce: Literal["last", "best"] = Field("last", description="a trial's value: the last epoch's or the best epoch's")
    trials: int = Field(20, ge=1, le=10000, description="finished trials wanted (complete or pruned)")
    timeout: float | None = Field(
        None, gt=0, description="seconds after which no new trial starts in this invocation (running ones finish)"
    )
    sampler: Literal["tpe", "grid", "random"] = Field("tpe", description="Optuna sampler")
    pruner: Literal["median", "none"] = Field("median", description="prune a trial below the median at an epoch")
    startup_trials: int = Field(5, ge=0, description="median pruner: finished trials before any pruning")
    warmup_epochs: int = Field(1, ge=0, description="median pruner: epochs of a trial before it may be pruned")
    seed: int = Field(0, ge=0, description="sampler seed")
    storage: str | None = Field(None, description="Optuna storage URL (default: optuna.db beside the MLflow store)")

    @field_validator("objective")
    @classmethod
    def _not_test(cls, objective: str) -> str:
        if objective.startswith("test/") or objective == "test":
            raise ValueError("the test split is never an objective; use a validation metric such as val/acc")
        return objective


class StudyConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\- ]+$", max_length=200, description="study name (the parent MLflow run)")
    experiment: str = Field("kdhub-studies", min_length=1, description="MLflow experiment")
    base: dict[str, Any] = Field(default_factory=dict, description="run config shared by every run")
    runs: list[StudyRun] = Field(min_length=1, description="the runs, in order (later runs may reference earlier ones)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="every run repeats for each seed")
    resources: Resources = Field(default_factory=Resources, description="resources of every run (Ray executor)")
    compare: StudyCompare | None = Field(
        None, description="per-class comparison of runs with a baseline, after the runs"
    )
    search: SearchSpec | None = Field(None, description="an Optuna search over the config of one run")
    max_runs: int = Field(10_000, ge=1, le=1_000_000, description="refuse a study that expands to more runs than this")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if any(s < 0 for s in seeds):
            raise ValueError("seeds must be >= 0")
        return _unique(seeds, "seed")

    @model_validator(mode="after")
    def _names(self) -> StudyConfig:
        names = [r.name for r in self.runs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"run name {duplicates[0]!r} is used twice; run names must be unique")
        return self

    def run_seeds(self, entry: StudyRun) -> list[int]:
        if entry.shared:
            return [self.seeds[0]]
        return list(entry.seeds) if entry.seeds is not None else list(self.seeds)


@dataclass
class PlannedRun:
    """One run of the study: a run entry at a grid point and a seed, with the runs it needs."""

    name: str
    label: str  # grid point, "" without a grid; "trial-7" for a search trial
    seed: int
    config: dict[str, Any]  # the run config, with ${...} references still in it
    grid: dict[str, Any] = field(default_factory=dict)  # path -> value of this grid point
    deps: dict[str, str] = field(default_factory=dict)  # reference text (inside ${}) -> key of the run it names
    resources: Resources = field(default_factory=Resources)
    role: Literal["run", "trial"] = "run"
    params: dict[str, Any] = field(default_factory=dict)  # a trial's sampled values
    title: str = ""  # how progress lines name it (default: name[grid point] sSEED)

    @property
    def key(self) -> str:
        """Unique in the study: name, grid point and seed (the identity a rerun matches)."""
        return f"{self.name}{f'[{self.label}]' if self.label else ''}-s{self.seed}"

    @property
    def display(self) -> str:
        if self.title:
            return self.title
        return f"{self.name}{f'[{self.label}]' if self.label else ''} s{self.seed}"

    @property
    def point(self) -> str:
        """Name and grid point (the unit seeds are aggregated over)."""
        return f"{self.name}{f'[{self.label}]' if self.label else ''}"

    @property
    def hash(self) -> str:
        return config_hash(self.config)


def config_hash(config: dict[str, Any]) -> str:
    """A digest of what a run computes: its config without tracking and progress settings."""
    content = {k: v for k, v in config.items() if k != "tracking"}
    if isinstance(content.get("train"), dict):
        content["train"] = {k: v for k, v in content["train"].items() if k != "progress"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


# loading ------------------------------------------------------------------------------------------


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Read and validate a study file; ``overrides`` (``--set``) apply to its ``base`` config."""
    data = read_yaml(path, "study file")  # kdhub's safe loader: no tags, no alias bombs, one line per problem
    return parse_study(data, str(path), overrides)


def parse_study(data: Any, source: str = "study", overrides: list[str] | None = None) -> StudyConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a study must be a mapping with name, base and runs")
    try:
        study = StudyConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, StudyConfig).replace("\n", "; ")) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    if overrides:
        study = study.model_copy(update={"base": apply_overrides(study.base, overrides)})
    return study
