"""The study file: its pydantic model, loading, and the expansion into planned runs.

Everything here is checked before anything trains: the file, every expanded run config
(:func:`kdhub.config.resolve_plugins`), references between runs, the comparison and the search.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdhub.contract.config_loading import apply_overrides, parse_config, read_yaml
from kdhub.contract.errors import ConfigError, KdhubError
from kdhub.contract.validation import format_validation_error
from kdhub.registry.loading import get_registry
from kdhub.registry.resolve import resolve_plugins

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
    "expand",
    "load_study",
    "substitute",
]

NAME = r"[A-Za-z0-9_\-]+"
# ${teacher} or ${teacher[width=16]} (a grid point of a run with a grid)
REFERENCE = re.compile(r"\$\{(" + NAME + r")(?:\[([^\[\]{}$]*)\])?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


Param = Annotated[Union[FloatParam, IntParam, ChoiceParam], Field(discriminator="type")]


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


# expansion ----------------------------------------------------------------------------------------


def _merge(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        return {k: _merge(base[k], v) if k in base else v for k, v in {**base, **top}.items()}
    return top


def _label(keys: list[str], values: tuple[Any, ...]) -> str:
    short = [k.split(".")[-1] for k in keys]
    names = short if len(set(short)) == len(short) else keys
    return ",".join(f"{n}={_text(v)}" for n, v in zip(names, values, strict=True))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _set(config: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    return apply_overrides(
        config, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in values.items()]
    )


def count_runs(study: StudyConfig) -> int:
    """How many runs the study expands to, computed without expanding it."""
    total = 0
    for entry in study.runs:
        if study.search is not None and entry.name == study.search.run:
            continue
        total += math.prod(len(v) for v in entry.grid.values()) * len(study.run_seeds(entry))
    return total


def _strings(data: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(data, dict):
        return [item for k, v in data.items() for item in _strings(v, f"{path}.{k}" if path else str(k))]
    if isinstance(data, list):
        return [item for i, v in enumerate(data) for item in _strings(v, f"{path}.{i}")]
    return [(path, data)] if isinstance(data, str) else []


def references(config: dict[str, Any], where: str) -> list[tuple[str, str, str]]:
    """(text inside ${}, run name, grid label) of every reference; a malformed one is an error."""
    found = []
    for path, text in _strings(config):
        start = 0
        while (at := text.find("${", start)) >= 0:
            match = REFERENCE.match(text, at)
            if match is None:
                snippet = text[at : at + 40]
                raise ConfigError(
                    f"{where}.{path}: malformed reference {snippet!r}; write ${{run}} or ${{run[grid point]}}"
                )
            found.append((match.group(0)[2:-1], match.group(1), match.group(2) or ""))
            start = match.end()
    return found


def expand(study: StudyConfig) -> list[PlannedRun]:
    """Every run of the study, in order (seed by seed, runs in file order), each config validated.

    A reference ``${name}`` in a run with seed ``s`` names the run ``name`` with seed ``s``, or its
    only run when it runs once (``shared: true`` or a single seed); ``${name[label]}`` names one
    grid point of a run with a grid. The search's template run is not expanded (its trials are
    planned by the search).
    """
    total = count_runs(study)
    if total > study.max_runs:
        raise ConfigError(
            f"runs: the study expands to {total:,} runs (runs x grid points x seeds), more than max_runs "
            f"{study.max_runs:,}; split it into smaller studies or raise max_runs"
        )
    template = study.search.run if study.search is not None else None
    entries = {e.name: e for e in study.runs}
    if template is not None and template not in entries:
        raise ConfigError(f"search.run: {template!r} names no run of the study (runs: {', '.join(entries)})")
    planned: list[PlannedRun] = []
    for seed in study.seeds + sorted({s for e in study.runs for s in study.run_seeds(e)} - set(study.seeds)):
        for entry in study.runs:
            if entry.name == template or seed not in study.run_seeds(entry):
                continue
            planned += _grid_points(study, entry, seed)
    by_name: dict[str, list[PlannedRun]] = {}
    for run in planned:
        by_name.setdefault(run.name, []).append(run)
    order = [e.name for e in study.runs]
    checked: set[str] = set()
    seeds: set[int] = set()
    for run in planned:
        point = config_hash({**run.config, "seed": 0})  # a grid point's seeds differ in the seed only
        if point not in checked or run.seed not in seeds:
            _validate(run)
            checked.add(point)
            seeds.add(run.seed)
        run.deps = _resolve_refs(run, by_name, order, template)
    if study.compare is not None:
        _check_compare(study.compare, study, planned)
    if study.search is not None:
        search_template(study, planned)
    return planned


def search_template(study: StudyConfig, planned: list[PlannedRun]) -> PlannedRun:
    """The searched run at the trials' seed (the run's first seed), with its references resolved.

    Checks the search space against it: every value range end and choice must give a valid config.
    """
    spec = study.search
    assert spec is not None
    entry = next(e for e in study.runs if e.name == spec.run)
    where = f"search (run {spec.run!r})"
    if entry.grid:
        raise ConfigError(f"search.run: run {spec.run!r} has a grid; the search space replaces it")
    by_name: dict[str, list[PlannedRun]] = {}
    for run in planned:
        by_name.setdefault(run.name, []).append(run)
    template = _grid_points(study, entry, study.run_seeds(entry)[0])[0]
    template.label, template.role = "", "trial"
    _validate(template)
    template.deps = _resolve_refs(template, by_name, [e.name for e in study.runs])
    for path, param in spec.space.items():
        values = param.choices if isinstance(param, ChoiceParam) else [param.low, param.high]
        for value in values:
            try:
                _validate(PlannedRun(spec.run, "", template.seed, _set(template.config, {path: value})))
            except ConfigError as err:
                raise ConfigError(f"search.space.{path}: {value!r} gives an invalid run: {err}") from None
        if spec.sampler == "grid":
            try:
                param.grid()
            except ValueError as err:
                raise ConfigError(f"search.space.{path}: {err}") from None
    data = parse_config(template.config).data
    for split, fraction, key in (
        ("val", data.val_fraction, "val_fraction"),
        ("holdout", data.holdout_fraction, "holdout_fraction"),
    ):
        if spec.objective.startswith(f"{split}/") and fraction <= 0:
            raise ConfigError(
                f"search.objective: {spec.objective} needs the {split!r} split in {where}; set data.{key} > 0"
            )
    return template


def search_notes(study: StudyConfig, template: PlannedRun) -> list[str]:
    """Advice on a valid search: an objective read on the split the run's policy also reads."""
    spec = study.search
    assert spec is not None
    config = parse_config(template.config)
    policy: Any = get_registry().create("policy", config.policy.name, **config.policy.options)
    if spec.objective.startswith("val/") and policy.needs_validation:
        return [
            f"note: policy {config.policy.name!r} reads the validation split the objective {spec.objective} is "
            "scored on; for a nested split give data.holdout_fraction and objective: holdout/acc"
        ]
    return []


def _grid_points(study: StudyConfig, entry: StudyRun, seed: int) -> list[PlannedRun]:
    import itertools

    keys = list(entry.grid)
    points = []
    for values in itertools.product(*(entry.grid[k] for k in keys)) if keys else [()]:
        config = _merge(study.base, entry.set)
        if not isinstance(config, dict):
            raise ConfigError(f"runs.{entry.name}: a run config must be a mapping")
        grid = dict(zip(keys, values, strict=True))
        try:
            config = _set(config, grid)
        except ConfigError as err:
            raise ConfigError(f"runs.{entry.name}.grid: {str(err).removeprefix('--set ')}") from None
        config["seed"] = seed
        points.append(
            PlannedRun(
                entry.name,
                _label(keys, values),
                seed,
                config,
                grid,
                resources=entry.resources or study.resources,
            )
        )
    return points


def _validate(run: PlannedRun) -> None:
    where = f"runs.{run.name}{f'[{run.label}]' if run.label else ''}"
    try:
        resolve_plugins(parse_config(run.config), get_registry())
    except KdhubError as err:
        raise ConfigError(f"{where}: {err}".replace("\n", "; ")) from None


def _resolve_refs(
    run: PlannedRun, by_name: dict[str, list[PlannedRun]], order: list[str], template: str | None = None
) -> dict[str, str]:
    where = f"runs.{run.name}"
    deps: dict[str, str] = {}
    for text, name, label in references(run.config, where):
        if name == template:
            raise ConfigError(f"{where}: ${{{text}}} names the search's template run, which never runs on its own")
        if name not in by_name or name == run.name or order.index(name) > order.index(run.name):
            raise ConfigError(f"{where}: ${{{text}}} names no earlier run of the study")
        deps[text] = _target(run, by_name[name], name, label, where).key
    return deps


def _target(run: PlannedRun, candidates: list[PlannedRun], name: str, label: str, where: str) -> PlannedRun:
    labels = list(dict.fromkeys(c.label for c in candidates))
    if label:
        if label not in labels:
            raise ConfigError(f"{where}: ${{{name}[{label}]}}: {name!r} has no grid point {label!r} (it has {labels})")
        candidates = [c for c in candidates if c.label == label]
    elif len(labels) > 1:
        example = f"${{{name}[{labels[0]}]}}"
        raise ConfigError(f"{where}: ${{{name}}}: {name!r} has {len(labels)} grid points; name one, e.g. {example}")
    seeds = sorted({c.seed for c in candidates})
    same = [c for c in candidates if c.seed == run.seed]
    if same:
        return same[0]
    if len(seeds) == 1:
        return candidates[0]  # a run that runs once serves every seed
    raise ConfigError(
        f"{where} seed {run.seed}: ${{{name}}} does not run with seed {run.seed} (its seeds: {seeds}); "
        f"give {name!r} this seed, or make it shared: true"
    )


def _value_at(config: Any, path: str) -> Any:
    node = config
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def compare_groups(
    spec: StudyCompare, planned: list[PlannedRun]
) -> list[tuple[str, list[PlannedRun], list[PlannedRun]]]:
    """(label, baseline runs, compared runs) for every compared run and grid point."""
    baseline = [r for r in planned if r.name == spec.baseline]
    groups = []
    for name in spec.runs:
        points = dict.fromkeys(r.label for r in planned if r.name == name)
        for label in points:
            runs = [r for r in planned if r.name == name and r.label == label]
            values = {p: _value_at(runs[0].config, p) for p in spec.match}
            base = [r for r in baseline if all(_value_at(r.config, p) == v for p, v in values.items())]
            groups.append((f"{name}[{label}]" if label else name, base, runs))
    return groups


def _check_compare(spec: StudyCompare, study: StudyConfig, planned: list[PlannedRun]) -> None:
    from kdhub.contract.tables import PER_CLASS_ACCURACY

    table, registry = PER_CLASS_ACCURACY, get_registry()
    by_name = {r.name: r for r in study.runs}
    for where, name in [("compare.baseline", spec.baseline)] + [
        (f"compare.runs.{i}", n) for i, n in enumerate(spec.runs)
    ]:
        if name not in by_name:
            raise ConfigError(f"{where}: {name!r} names no run of the study")
        if study.search is not None and name == study.search.run:
            raise ConfigError(f"{where}: {name!r} is the search's template run; it does not run on its own")
        # a metric that declares the table the comparison reads
        config = parse_config(next(r.config for r in planned if r.name == name))
        if not any(table in registry.get("metric", m.name).tables and m.split == spec.split for m in config.metrics):
            raise ConfigError(
                f"{where}: run {name!r} has no metric logging the {table.name} table on split {spec.split!r};"
                f" add {{name: {table.name}, split: {spec.split}}} to its metrics"
            )
    if spec.baseline in spec.runs:
        raise ConfigError(f"compare.runs: {spec.baseline!r} is the baseline")
    base_points = {r.label for r in planned if r.name == spec.baseline}
    if not spec.match and len(base_points) > 1:
        raise ConfigError(
            f"compare.baseline: run {spec.baseline!r} has {len(base_points)} grid points; name the config paths "
            "that pair each compared point with its baseline point in compare.match (e.g. [student.options.width])"
        )
    for label, base, runs in compare_groups(spec, planned):
        if not base:
            values = {p: _value_at(runs[0].config, p) for p in spec.match}
            raise ConfigError(f"compare.match: no run of baseline {spec.baseline!r} has {values} (for {label})")
        if len({r.label for r in base}) > 1:
            raise ConfigError(
                f"compare.match: {label} matches {len({r.label for r in base})} grid points of {spec.baseline!r}; "
                "add the config paths that tell them apart"
            )


def substitute(config: Any, run_ids: dict[str, str]) -> Any:
    """The config with every ``${reference}`` replaced by the run id in ``run_ids`` (by reference text)."""
    if isinstance(config, dict):
        return {k: substitute(v, run_ids) for k, v in config.items()}
    if isinstance(config, list):
        return [substitute(v, run_ids) for v in config]
    if isinstance(config, str):
        return REFERENCE.sub(lambda m: run_ids.get(m.group(0)[2:-1], m.group(0)), config)
    return config
