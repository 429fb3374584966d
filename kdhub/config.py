"""Run configs: one YAML file validated by pydantic, overridable with ``--set dotted.path=value``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdhub.errors import ConfigError, KdhubError
from kdhub.registry import Registry, format_validation_error, inner_model

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "MethodRef",
    "MetricRef",
    "ModelRef",
    "OptimConfig",
    "PluginRef",
    "RunConfig",
    "ScheduleConfig",
    "TeacherRef",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "parse_config",
    "resolve_plugins",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginRef(_Strict):
    """A plugin by name with its options; a bare string ``"kd"`` means ``{name: kd}``."""

    name: str = Field(description="registered plugin name (``kdhub list KIND``)")
    options: dict[str, Any] = Field(default_factory=dict, description="the plugin's options (``kdhub show KIND NAME``)")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class MethodRef(PluginRef):
    weight: float | None = Field(None, ge=0, description="loss weight (default: the method's reference weight)")


class MetricRef(PluginRef):
    split: Literal["train", "val", "test"] = Field(
        "test", description="evaluated on this split (train: no augmentation)"
    )
    every: int = Field(0, ge=0, description="also evaluate every N epochs (0 = only at the end)")
    at: list[int] = Field(default_factory=list, description="also evaluate after these epochs")


class ModelRef(PluginRef):
    pass


class TeacherRef(ModelRef):
    weights: str | None = Field(
        None, description="checkpoint path or MLflow reference runs:/<run_id>/checkpoints/final.pt"
    )


class DataConfig(PluginRef):
    name: str = Field("digits", description="dataset plugin")
    batch_size: int = Field(64, ge=1, le=65536, description="training batch size")
    eval_batch_size: int = Field(512, ge=1, le=65536, description="evaluation batch size")
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="class-balanced fraction of the training set held out for validation"
    )
    drop_last: bool = Field(False, description="drop the last partial training batch")
    train_fraction: float = Field(
        1.0, gt=0, le=1, description="class-balanced fraction of the training set used (quick runs on large data)"
    )
    workers: int | None = Field(
        None,
        ge=0,
        le=256,
        description="streamed datasets: DataLoader worker processes (None = the cores of this process minus one)",
    )
    prefetch: int = Field(2, ge=1, le=64, description="streamed datasets: batches prefetched per worker")
    pin_memory: bool = Field(True, description="streamed datasets: pin host batches for faster copies (CUDA)")
    decode: Literal["workers", "device"] = Field(
        "workers",
        description="streamed datasets: decode images in the workers, or JPEGs in batches on the run's device "
        "(nvJPEG on CUDA; workers only read files)",
    )
    on_error: Literal["raise", "skip"] = Field(
        "raise",
        description="streamed datasets: an unreadable image stops the run naming the file (raise), or is "
        "skipped with a warning and counted in the data/skipped_images metric (skip)",
    )


class OptimConfig(_Strict):
    name: Literal["sgd", "adamw"] = Field("sgd", description="optimizer")
    lr: float = Field(0.05, gt=0, le=10, description="learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD)")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")


class ScheduleConfig(_Strict):
    name: Literal["multistep", "cosine", "constant"] = Field("multistep", description="learning-rate schedule")
    milestones: list[Union[int, float]] = Field(
        default_factory=lambda: [0.625, 0.75, 0.875],
        description="multistep: epochs (int) or fractions of the run (float < 1) where lr is multiplied by gamma",
    )
    gamma: float = Field(0.1, gt=0, le=1, description="multistep factor")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up length in epochs")
    min_lr: float = Field(0.0, ge=0, description="cosine: final learning rate")


class CheckpointConfig(_Strict):
    every: int = Field(0, ge=0, description="keep checkpoints/epoch_XXX.pt every N epochs as artifacts (0 = none)")
    resume_every: int = Field(1, ge=1, description="write the resumable checkpoints/last.pt every N epochs")


class TrainConfig(_Strict):
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    amp: Literal["none", "bf16"] = Field("none", description="autocast precision for forward passes")
    channels_last: bool = Field(False, description="use channels_last memory format")
    compile: bool = Field(False, description="torch.compile the student")
    progress: bool = Field(True, description="show progress bars")
    deterministic: bool = Field(False, description="use deterministic algorithms (slower)")
    eval_every: int = Field(1, ge=1, description="evaluate test accuracy every N epochs (and at the end)")


class TrackingConfig(_Strict):
    uri: str | None = Field(
        None, description="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    experiment: str = Field("kdhub", min_length=1, description="MLflow experiment name")
    run_name: str | None = Field(None, description="MLflow run name (default: generated from the config)")
    tags: dict[str, str] = Field(default_factory=dict, description="extra MLflow tags")
    log_checkpoints: bool = Field(True, description="log checkpoints as MLflow artifacts")


class RunConfig(_Strict):
    """One run: no teacher means plain supervised training (teachers and baselines)."""

    seed: int = Field(0, ge=0, description="seed of everything (weights, data order, augmentation, splits)")
    epochs: int = Field(10, ge=1, le=100000, description="training epochs")
    data: DataConfig = Field(default_factory=DataConfig, description="dataset plugin, batching and validation split")
    student: ModelRef = Field(description="student model plugin")
    teacher: TeacherRef | None = Field(None, description="teacher model plugin and weights (None = no distillation)")
    ce_weight: float = Field(1.0, ge=0, description="weight of the task (cross-entropy) loss")
    methods: list[MethodRef] = Field(default_factory=list, description="distillation methods and their weights")
    policy: PluginRef = Field(default_factory=lambda: PluginRef(name="constant"), description="policy plugin")
    metrics: list[MetricRef] = Field(
        default_factory=lambda: [MetricRef(name="accuracy"), MetricRef(name="per_class_accuracy")],
        description="metrics evaluated at chosen epochs and at the end",
    )
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimizer")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="learning-rate schedule")
    train: TrainConfig = Field(default_factory=TrainConfig, description="device, precision and loop settings")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="what checkpoints to keep")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="MLflow store, experiment and run name"
    )

    @field_validator("methods", "metrics", mode="before")
    @classmethod
    def _allow_single(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, dict)) else value


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a config dict; every problem becomes one ``path: message`` line in a ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a run config must be a mapping, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, RunConfig)) from None


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``--set`` overrides and validate it."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}".replace("\n", " ")) from None
    return parse_config(apply_overrides(data, overrides or []), str(path))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``a.b.c=value`` sets a nested key (value parsed as YAML); ``methods.0.weight=1`` indexes lists."""
    data = _deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected dotted.path=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            nxt = parts[depth + 1]
            node = _child(node, part, key, create=[] if nxt.isdigit() else {})
        _assign(node, parts[-1], value, key)
    return data


def _child(node: Any, part: str, key: str, create: Any) -> Any:
    """The container at ``part`` (created if missing); a plugin shorthand "kd" becomes {name: kd}."""
    if isinstance(node, list):
        index = _index(part, node, key)
        if isinstance(node[index], str):
            node[index] = {"name": node[index]}
        return node[index]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {key}: {part!r} is inside a value that is not a mapping")
    value = node.get(part)
    if isinstance(value, str):
        value = node[part] = {"name": value}
    elif value is None:
        value = node[part] = create
    return value


def _assign(node: Any, part: str, value: Any, key: str) -> None:
    if isinstance(node, list):
        node[_index(part, node, key)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ConfigError(f"--set {key}: cannot set {part!r} inside a {type(node).__name__}")


def _index(part: str, node: list[Any], key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {key}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def resolve_plugins(config: RunConfig, registry: Registry) -> dict[str, Any]:
    """Validate every plugin name and its options; returns the options objects by config path.

    Raises a ConfigError naming the YAML path and the plugin for an unknown name or bad option.
    """
    refs: list[tuple[str, str, PluginRef]] = [("data", "dataset", config.data), ("student", "model", config.student)]
    if config.teacher is not None:
        refs.append(("teacher", "model", config.teacher))
    refs += [(f"methods.{i}", "method", ref) for i, ref in enumerate(config.methods)]
    refs.append(("policy", "policy", config.policy))
    refs += [(f"metrics.{i}", "metric", ref) for i, ref in enumerate(config.metrics)]
    resolved: dict[str, Any] = {}
    for path, kind, ref in refs:
        try:
            registry.entry(kind, ref.name)
        except KdhubError as err:
            raise ConfigError(f"{path}.name: {err}") from None
        resolved[path] = registry.options(kind, ref.name, ref.options, where=f"{path}.options")
    if config.methods and config.teacher is None:
        needing = [r.name for r in config.methods if getattr(registry.get("method", r.name), "needs_teacher", True)]
        if needing:
            raise ConfigError(f"teacher: required by method {needing[0]!r} (no teacher = plain supervised training)")
    names = [r.name for r in config.methods]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"methods: {duplicates[0]!r} is listed twice")
    return resolved


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def config_reference() -> str:
    """Markdown reference of every run-config key, generated from the pydantic models."""
    lines = [
        "# Run config reference",
        "",
        "Generated from `kdhub/config.py` by `python -m kdhub.config > docs/config.md` (a test keeps it in sync).",
        "A run is one YAML file with these keys; unknown keys are errors. Plugin options are documented by",
        "`kdhub show KIND NAME`. Override any value from the command line with `--set dotted.path=value`",
        "(`--set methods.0.options.temperature=2`).",
        "",
        "| key | type | default | description |",
        "| --- | --- | --- | --- |",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            inner = inner_model(field.annotation)
            kind = (
                "list" if "list[" in str(field.annotation) else ("mapping" if inner else _type_name(field.annotation))
            )
            default = "required" if field.is_required() else _default(field)
            lines.append(f"| `{key}` | {kind} | {default} | {field.description or ''} |")
            if inner is not None and inner is not PluginRef:
                walk(inner, f"{key}{'[i]' if kind == 'list' else ''}.")

    walk(RunConfig, "")
    return "\n".join(lines) + "\n"


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("|", "\\|")


def _default(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return "`" + ", ".join(v.name for v in value) + "`"
    return f"`{value!r}`"


if __name__ == "__main__":
    print(config_reference(), end="")
