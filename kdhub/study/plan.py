"""A study expanded into planned runs, checked before anything trains: every run config
(:func:`kdhub.registry.resolve.resolve_plugins`), references between runs (``${teacher}``), the
comparison and the search's template run."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import yaml

from kdhub.contract.config_loading import apply_overrides, parse_config
from kdhub.contract.errors import ConfigError, KdhubError
from kdhub.contract.tables import PER_CLASS_ACCURACY
from kdhub.registry.loading import get_registry
from kdhub.registry.resolve import resolve_plugins
from kdhub.study.spec import REFERENCE, ChoiceParam, PlannedRun, StudyCompare, StudyConfig, StudyRun, config_hash
from kdhub.tracking.artifacts import _split_reference

__all__ = [
    "compare_groups",
    "count_runs",
    "expand",
    "references",
    "search_notes",
    "search_template",
    "substitute",
]


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
    for text, name, label in references(run.config, where):  # malformed references are refused here first
        if name == template:
            raise ConfigError(f"{where}: ${{{text}}} names the search's template run, which never runs on its own")
        if name not in by_name or name == run.name or order.index(name) > order.index(run.name):
            raise ConfigError(f"{where}: ${{{text}}} names no earlier run of the study")
        deps[text] = _target(run, by_name[name], name, label, where).key
    _check_reference_paths(run.config, where)
    return deps


def _check_reference_paths(config: dict[str, Any], where: str) -> None:
    """A ``runs:/${run}/<path>`` reference is checked as its run will be: the path stays inside the run's artifacts."""
    for path, text in _strings(config):
        if text.startswith("runs:/") and "${" in text:
            standin = REFERENCE.sub("0" * 32, text)  # a well-formed run id in place of each ${run}
            try:
                _split_reference(standin, "")
            except KdhubError as err:
                raise ConfigError(f"{where}.{path}: {str(err).replace(standin, text)}") from None


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
