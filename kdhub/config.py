"""Run configs: one YAML file validated by pydantic, overridable with ``--set dotted.path=value``."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from kdhub.base import EpochOrFraction, FiniteFloat, StrictModel
from kdhub.errors import ConfigError, KdhubError
from kdhub.registry import Registry, format_validation_error, inner_model, shown
from kdhub.tracking import (
    MAX_EXPERIMENT_NAME_LENGTH,
    MAX_RUN_NAME_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    tag_problem,
    uri_problem,
)

__all__ = [
    "CheckpointConfig",
    "ConfigLoader",
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
    "check_device",
    "check_resume",
    "load_config",
    "parse_config",
    "parse_yaml",
    "read_yaml",
    "resolve_plugins",
]

MAX_YAML_BYTES = 4 * 2**20
MAX_YAML_DEPTH = 64
MAX_YAML_ALIASES = 64
_STR = "tag:yaml.org,2002:str"
_ALLOWED_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float", "str", "seq", "map", "merge")}


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, stricter for configs.

    - Only plain data: null, booleans, numbers, strings, lists and mappings. Explicit tags
      (``!!binary``, ``!!set``, ``!!python/...``, ``!custom``) are refused; unquoted dates stay strings.
    - Duplicate keys in a mapping are refused (PyYAML silently keeps the last one).
    - Nesting deeper than 64 levels is refused (before Python's recursion limit is reached).
    - Anchors and aliases share values, within limits that make alias bombs ("billion laughs")
      impossible: at most 64 aliases per document, an alias may not point at a value that contains
      aliases itself, nor at the value it sits in (no self-reference). So the data after expansion is
      at most 64 times the size of the file.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._open: list[str] = []
        self._with_aliases: set[str] = set()

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            anchor = event.anchor
            problem = None
            if anchor in self._open:
                problem = f"alias *{anchor} refers to the value it is part of"
            elif anchor in self._with_aliases:
                problem = f"alias *{anchor} refers to a value that holds aliases itself (aliases may not nest)"
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                problem = f"more than {MAX_YAML_ALIASES} aliases"
            if problem:
                raise yaml.composer.ComposerError(None, None, problem, event.start_mark)
            self._with_aliases.update(self._open)
            return super().compose_node(parent, index)
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", event.start_mark
            )
        if anchor:
            self._open.append(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor:
                self._open.pop()
        tag = node.tag
        if tag == "tag:yaml.org,2002:timestamp" or (isinstance(node, yaml.ScalarNode) and tag == _STR):
            node.tag = _STR
        elif tag not in _ALLOWED_TAGS:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"the tag {tag.replace('tag:yaml.org,2002:', '!!')} is not allowed in a config "
                "(only plain values, lists and mappings)",
                node.start_mark,
            )
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            "while reading a mapping",
                            node.start_mark,
                            f"found duplicate key {key!r}",
                            key_node.start_mark,
                        )
                    seen[key] = True
                except TypeError:  # an unhashable key: PyYAML reports it itself
                    pass
        return super().construct_mapping(node, deep)


MAX_WEIGHT = 1e6
"""Largest loss weight accepted (RepDistiller's largest reference weight is SP's 3,000)."""
MAX_EPOCHS = 100_000
MAX_SEED = 2**32 - 1
"""Seeds are 32-bit (NumPy's legacy seeding and scikit-learn's ``random_state`` take no more)."""
MAX_PATH = 4096
MAX_NAME = 200
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]{1,3})?)$")


class _Strict(StrictModel):
    pass


class PluginRef(_Strict):
    """A plugin by name with its options; a bare string ``"kd"`` means ``{name: kd}``."""

    name: str = Field(min_length=1, max_length=MAX_NAME, description="registered plugin name (``kdhub list KIND``)")
    options: dict[str, Any] = Field(default_factory=dict, description="the plugin's options (``kdhub show KIND NAME``)")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class MethodRef(PluginRef):
    weight: FiniteFloat | None = Field(
        None, ge=0, le=MAX_WEIGHT, description="loss weight (default: the method's reference weight)"
    )


class MetricRef(PluginRef):
    split: Literal["train", "val", "holdout", "test"] = Field(
        "test", description="evaluated on this split (train: no augmentation; val / holdout need their fraction > 0)"
    )
    every: int = Field(0, ge=0, le=MAX_EPOCHS, description="also evaluate every N epochs (0 = only at the end)")
    at: list[Annotated[int, Field(ge=1, le=MAX_EPOCHS)]] = Field(
        default_factory=list, max_length=1000, description="also evaluate after these epochs (1 .. epochs)"
    )


class ModelRef(PluginRef):
    pass


class TeacherRef(ModelRef):
    weights: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PATH,
        description="checkpoint path (kdhub .pt, state_dict .pt/.pth or .safetensors) or MLflow reference "
        "runs:/<run_id>/checkpoints/final.pt",
    )


class DataConfig(PluginRef):
    name: str = Field("digits", min_length=1, max_length=MAX_NAME, description="dataset plugin")
    batch_size: int = Field(64, ge=1, le=65536, description="training batch size")
    eval_batch_size: int = Field(512, ge=1, le=65536, description="evaluation batch size")
    val_fraction: FiniteFloat = Field(
        0.0, ge=0, lt=1, description="class-balanced fraction of the training set held out for validation"
    )
    holdout_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="class-balanced fraction of the remaining training set held out as a second, nested validation"
        " split 'holdout' (searches score on it, so the validation split stays the policy's)",
    )
    drop_last: bool = Field(False, description="drop the last partial training batch")
    train_fraction: FiniteFloat = Field(
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
    max_pixels: int = Field(
        89_478_485,
        ge=1,
        le=10**10,
        description="streamed datasets: an image whose header declares more pixels is refused before it is "
        "decoded (a decompression bomb), as an unreadable image (see on_error)",
    )


_Beta = Annotated[FiniteFloat, Field(ge=0, lt=1)]


class OptimConfig(_Strict):
    name: Literal["sgd", "adamw"] = Field("sgd", description="optimizer")
    lr: FiniteFloat = Field(0.05, gt=0, le=10, description="learning rate")
    momentum: FiniteFloat = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD)")
    weight_decay: FiniteFloat = Field(5e-4, ge=0, le=1, description="weight decay")
    betas: tuple[_Beta, _Beta] = Field((0.9, 0.999), description="AdamW betas, each in [0, 1)")


class ScheduleConfig(_Strict):
    name: Literal["multistep", "cosine", "constant"] = Field("multistep", description="learning-rate schedule")
    milestones: list[EpochOrFraction] = Field(
        default_factory=lambda: [0.625, 0.75, 0.875],
        max_length=1000,
        description="multistep: epochs (int) or fractions of the run (float < 1) where lr is multiplied by gamma",
    )
    gamma: FiniteFloat = Field(0.1, gt=0, le=1, description="multistep factor")
    warmup_epochs: FiniteFloat = Field(
        0.0, ge=0, le=MAX_EPOCHS, description="linear warm-up length in epochs (below epochs)"
    )
    min_lr: FiniteFloat = Field(0.0, ge=0, le=10, description="cosine: final learning rate (at most optim.lr)")


class CheckpointConfig(_Strict):
    every: int = Field(
        0, ge=0, le=MAX_EPOCHS, description="keep checkpoints/epoch_XXX.pt every N epochs as artifacts (0 = none)"
    )
    resume_every: int = Field(
        1, ge=1, le=MAX_EPOCHS, description="write the resumable checkpoints/last.pt every N epochs"
    )


class TrainConfig(_Strict):
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    amp: Literal["none", "bf16"] = Field(
        "none", description="autocast precision of the forward passes and losses (the teacher's: teacher_amp)"
    )
    channels_last: bool = Field(False, description="use channels_last memory format")
    compile: bool = Field(False, description="torch.compile the student (falls back to eager with a warning)")
    compile_backend: Literal["inductor", "cudagraphs", "aot_eager", "eager"] = Field(
        "inductor", description="torch.compile backend (cudagraphs; aot_eager and eager to debug a compile problem)"
    )
    teacher_amp: Literal["none", "bf16"] | None = Field(
        None, description="autocast precision of the teacher's training forward (None = train.amp)"
    )
    teacher_compile: bool | None = Field(None, description="torch.compile the teacher (None = train.compile)")
    teacher_grad_mode: Literal["no_grad", "inference_mode"] = Field(
        "no_grad",
        description="the teacher's training forward under torch.no_grad or torch.inference_mode "
        "(inference_mode: its outputs are copied once per step so that losses can save them)",
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="torch intra-op CPU threads (None = $OMP_NUM_THREADS if set, else the cores available "
        "to the process / processes per machine); $KDHUB_THREADS overrides",
    )
    progress: bool = Field(True, description="show progress bars")
    deterministic: bool = Field(False, description="use deterministic algorithms (slower)")
    eval_every: int = Field(
        1, ge=1, le=MAX_EPOCHS, description="evaluate test accuracy every N epochs (and at the end)"
    )
    finite_check_steps: int = Field(
        100,
        ge=0,
        le=1_000_000,
        description="stop a diverging run: check every N training steps (one host sync each) and at every epoch"
        " end that the losses and weights are finite (0 = at epoch ends only)",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not DEVICE.match(value):
            raise ValueError(f"unknown device {shown(value)} (use auto, cpu, cuda, cuda:N or mps)")
        return value


# ``register`` is the documented YAML key; pydantic warns that it shadows ABCMeta.register, which
# instances never see (fields live in the instance), so the warning is silenced for this class only.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class TrackingConfig(_Strict):
        uri: str | None = Field(
            None,
            min_length=1,
            max_length=MAX_PATH,
            description="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
        )
        experiment: str = Field(
            "kdhub", min_length=1, max_length=MAX_EXPERIMENT_NAME_LENGTH, description="MLflow experiment name"
        )
        run_name: str | None = Field(
            None,
            min_length=1,
            max_length=MAX_RUN_NAME_LENGTH,
            description="MLflow run name (default: generated from the config)",
        )
        tags: dict[str, str] = Field(
            default_factory=dict, max_length=100, description="extra MLflow tags (MLflow's key and value limits)"
        )
        log_checkpoints: bool = Field(True, description="log checkpoints as MLflow artifacts")
        log_model: bool = Field(
            True, description="log the trained student as an MLflow model (pt2, signature, input example) at the end"
        )
        register: str | None = Field(
            None,
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
            max_length=256,
            description="also register the student in the MLflow Model Registry under this name (new version per run)",
        )
        description: str | None = Field(
            None,
            min_length=1,
            max_length=MAX_TAG_VALUE_LENGTH,
            description="run description in the MLflow UI (default: generated from the config and the result)",
        )
        system_metrics: bool = Field(
            False, description="sample CPU, memory, disk, network and GPU use with MLflow's system-metrics monitor"
        )

        @model_validator(mode="after")
        def _register_needs_model(self) -> TrackingConfig:
            if self.register and not self.log_model:
                raise ValueError("register needs log_model: true (the registered version is the logged model)")
            return self

        @field_validator("uri")
        @classmethod
        def _uri(cls, value: str | None) -> str | None:
            problem = uri_problem(value) if value is not None else None
            if problem:
                raise ValueError(problem)
            return value

        @field_validator("tags")
        @classmethod
        def _tags(cls, value: dict[str, str]) -> dict[str, str]:
            for key, text in value.items():
                problem = tag_problem(key, text)
                if problem:
                    raise ValueError(problem)
            return value


class RunConfig(_Strict):
    """One run: no teacher means plain supervised training (teachers and baselines)."""

    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="seed of everything (weights, data order, augmentation, splits)"
    )
    epochs: int = Field(10, ge=1, le=MAX_EPOCHS, description="training epochs")
    data: DataConfig = Field(default_factory=DataConfig, description="dataset plugin, batching and validation split")
    student: ModelRef = Field(description="student model plugin")
    teacher: TeacherRef | None = Field(None, description="teacher model plugin and weights (None = no distillation)")
    ce_weight: FiniteFloat = Field(1.0, ge=0, le=MAX_WEIGHT, description="weight of the task (cross-entropy) loss")
    methods: list[MethodRef] = Field(
        default_factory=list, max_length=100, description="distillation methods and their weights"
    )
    policy: PluginRef = Field(default_factory=lambda: PluginRef(name="constant"), description="policy plugin")
    metrics: list[MetricRef] = Field(
        default_factory=lambda: [MetricRef(name="accuracy"), MetricRef(name="per_class_accuracy")],
        max_length=100,
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

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        """Checks across keys; a ConfigError (not a ValueError) so that it names the right path."""
        sched, epochs = self.schedule, self.epochs
        if sched.min_lr > self.optim.lr:
            raise ConfigError(
                f"schedule.min_lr: {sched.min_lr:g} is above optim.lr {self.optim.lr:g} "
                "(the schedule would raise the learning rate; lower min_lr)"
            )
        if sched.warmup_epochs >= epochs:
            raise ConfigError(
                f"schedule.warmup_epochs: {sched.warmup_epochs:g} is not below epochs {epochs} "
                "(the warm-up would never end)"
            )
        for i, ref in enumerate(self.metrics):
            late = [e for e in ref.at if e > epochs]
            if late:
                raise ConfigError(f"metrics.{i}.at: epoch {late[0]} is after the last epoch {epochs}")
            if ref.every > epochs:
                raise ConfigError(f"metrics.{i}.every: {ref.every} is more than the {epochs} epochs of the run")
        return self


_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def _decode(raw: bytes, source: str) -> str:
    """The text of a YAML file: UTF-8 only (a UTF-8 byte-order mark is tolerated)."""
    for bom, name in _BOMS:
        if raw.startswith(bom):
            raise ConfigError(f"{source}: the file is {name} text; kdhub reads UTF-8, save it as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{source}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "save the file as UTF-8 (is it a binary or Latin-1 file?)"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"{source}: the file holds NUL bytes; it is not a YAML text file")
    return text.removeprefix("\ufeff")


def parse_yaml(text: str, source: str = "config") -> Any:
    """YAML text through kdhub's safe loader (see :class:`ConfigLoader`); errors name ``source``."""
    loader = ConfigLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(p for p in (err.context, err.problem) if p)
        raise ConfigError(f"{source}: invalid YAML: {where}{what}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {err}".replace("\n", " ")) from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike[str], what: str = "config file") -> Any:
    """Read a YAML file safely: one ConfigError line for a missing, unreadable, binary or hostile file."""
    name = str(path)
    shown_name = name if len(name) <= 200 else f"{name[:100]}...{name[-40:]} ({len(name)} characters)"
    try:
        file = Path(path)
        if not file.exists():
            raise ConfigError(f"{shown_name}: no such {what}")
        if not file.is_file():
            raise ConfigError(f"{shown_name}: not a file (give a YAML {what})")
        if file.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{shown_name}: {file.stat().st_size:,} bytes is too large for a YAML {what}")
        raw = file.read_bytes()
    except OSError as err:
        raise ConfigError(f"{shown_name}: cannot read the {what}: {err.strerror or err}") from None
    return parse_yaml(_decode(raw, shown_name), shown_name)


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a config dict; every problem becomes one ``path: message`` line in a ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a run config must be a mapping, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, RunConfig)) from None
    except RecursionError:
        raise ConfigError(f"{source}: the config is nested too deeply") from None


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``--set`` overrides and validate it."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a run config must be a mapping of keys, got {type(data).__name__}")
    return parse_config(apply_overrides(data, overrides or []), str(path))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``a.b.c=value`` sets a nested key (value parsed as YAML); ``methods.0.weight=1`` indexes lists."""
    data = _deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected dotted.path=value")
        try:
            value = parse_yaml(raw, f"--set {key}") if raw else ""
        except ConfigError as err:
            if "invalid YAML" not in str(err):
                raise
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
    """Validate every plugin name and its options, and everything about the run that needs no data.

    Returns the options objects by config path. Raises a ConfigError naming the YAML path and the
    plugin for an unknown name, a bad option, or a combination that cannot run: a method or metric
    that needs a teacher without one, a split or policy that needs a held-out split without its
    fraction, a policy that needs methods without any, feature roles a named model does not
    provide. Plugins' capabilities are read from instances made with the run's options.
    """
    refs: list[tuple[str, str, PluginRef]] = [("data", "dataset", config.data), ("student", "model", config.student)]
    if config.teacher is not None:
        refs.append(("teacher", "model", config.teacher))
    refs += [(f"methods.{i}", "method", ref) for i, ref in enumerate(config.methods)]
    refs.append(("policy", "policy", config.policy))
    refs += [(f"metrics.{i}", "metric", ref) for i, ref in enumerate(config.metrics)]
    resolved: dict[str, Any] = {}
    plugins: dict[str, Any] = {}
    for path, kind, ref in refs:
        try:
            cls = registry.get(kind, ref.name)
        except KdhubError as err:
            raise ConfigError(f"{path}.name: {err}") from None
        resolved[path] = registry.options(kind, ref.name, ref.options, where=f"{path}.options")
        plugins[path] = cls(resolved[path])
    _check_run(config, plugins)
    return resolved


def _check_run(config: RunConfig, plugins: dict[str, Any]) -> None:
    names = [r.name for r in config.methods]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"methods: {duplicates[0]!r} is listed twice")
    methods = [
        (f"methods.{i}", f"method {ref.name!r}", plugins[f"methods.{i}"]) for i, ref in enumerate(config.methods)
    ]
    metrics = [
        (f"metrics.{i}", f"metric {ref.name!r}", plugins[f"metrics.{i}"]) for i, ref in enumerate(config.metrics)
    ]
    if config.teacher is None:
        for path, who, plugin in methods + metrics:
            if plugin.needs_teacher:
                raise ConfigError(f"teacher: required by {who} at {path} (no teacher = plain supervised training)")
    policy, policy_name = plugins["policy"], f"policy {config.policy.name!r}"
    if policy.needs_methods and not config.methods:
        raise ConfigError(f"methods: {policy_name} selects what a teacher teaches; add a method (methods: [kd])")
    if policy.needs_validation and config.data.val_fraction <= 0:
        raise ConfigError(f"data.val_fraction: {policy_name} needs a validation split (set it > 0, e.g. 0.05)")
    for i, ref in enumerate(config.metrics):
        for split, key in (("val", "val_fraction"), ("holdout", "holdout_fraction")):
            if ref.split == split and getattr(config.data, key) <= 0:
                raise ConfigError(f"metrics.{i}.split: {split!r} needs data.{key} > 0 (metric {ref.name!r})")
    sides = [("student", config.student.name, plugins["student"])]
    if config.teacher is not None:
        sides.append(("teacher", config.teacher.name, plugins["teacher"]))
    for path, who, plugin in methods + metrics:
        for side, model_name, model in sides:
            provided = model.feature_roles
            missing = [r for r in plugin.feature_roles if provided is not None and r not in provided]
            if missing:
                raise ConfigError(
                    f"{path}: {who} needs {', '.join(repr(m) for m in missing)} features, which {side} model"
                    f" {model_name!r} does not provide (it provides: {', '.join(provided) or 'none'})"
                )
    check_device(config.train.device)


def check_device(spec: str) -> None:
    """Refuse a ``train.device`` this machine does not have (before any data is loaded)."""
    import torch

    if spec in ("auto", "cpu"):
        return
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {spec!r} but this machine has no usable CUDA GPU (use auto or cpu)")
        count = torch.cuda.device_count()
        index = int(spec.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError(
                f"train.device: {spec!r} but this machine has {count} CUDA device{'s' if count != 1 else ''} "
                f"(cuda:0 .. cuda:{count - 1})"
            )
    elif spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("train.device: 'mps' but this machine has no usable Apple GPU (use auto or cpu)")


RESUMABLE = (
    "epochs",
    "train.progress",
    "train.device",
    "train.eval_every",
    "checkpoint.every",
    "checkpoint.resume_every",
    "train.threads",
    "train.finite_check_steps",
    "tracking.uri",
    "tracking.log_checkpoints",
    "tracking.log_model",
    "tracking.system_metrics",
)
"""Keys a resumed run may change (``epochs`` may only grow); any other change is refused."""


_UNSET = object()


def _differences(old: Any, new: Any, path: str) -> list[tuple[str, Any, Any]]:
    """(dotted path, old, new) of every difference; lists of different lengths differ as a whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in dict.fromkeys([*old, *new]):
            out += _differences(old.get(key, _UNSET), new.get(key, _UNSET), f"{path}.{key}" if path else str(key))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in _differences(a, b, f"{path}.{i}")]
    return [] if old == new else [(path, old, new)]


def _brief(value: Any) -> str:
    if value is _UNSET:
        return "unset"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
    return text if len(text) <= 60 else f"{text[:57]}..."


def check_resume(config: RunConfig, logged: dict[str, Any], run_id: str) -> None:
    """Refuse resuming run ``run_id`` (whose config was ``logged``) with a config that changes it.

    Only the :data:`RESUMABLE` keys may differ: anything else (method, options, lr, data ...) would be
    half-applied, since the checkpoint holds the state built from the logged config.
    """
    try:
        before = parse_config(logged, "the run's logged config").model_dump(mode="json")
    except ConfigError:
        before = logged if isinstance(logged, dict) else {}
    changed = _differences(before, config.model_dump(mode="json"), "")
    refused = [(k, a, b) for k, a, b in changed if not any(k == r or k.startswith(f"{r}.") for r in RESUMABLE)]
    if refused:
        key, old, new = refused[0]
        more = f" and {len(refused) - 1} more key{'s' if len(refused) > 2 else ''}" if len(refused) > 1 else ""
        raise ConfigError(
            f"--resume {run_id}: the config changes {key} ({_brief(old)} -> {_brief(new)}){more}; a resumed run "
            f"keeps its config except {', '.join(RESUMABLE)} (start a new run instead)"
        )
    if config.epochs < int(before.get("epochs", 0) or 0):
        raise ConfigError(
            f"--resume {run_id}: epochs {config.epochs} is fewer than the run's {before['epochs']} (it may only grow)"
        )


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def config_reference() -> str:
    """Markdown reference of every run-config key, generated from the pydantic models."""
    from kdhub.reference import option_rows

    lines = [
        "# Run config reference",
        "",
        "Generated from `kdhub/config.py` by `python -m kdhub.config > docs/config.md` (a test keeps it in sync).",
        "A run is one YAML file with these keys; unknown keys are errors. Plugin options are documented by",
        "`kdhub show KIND NAME`. Override any value from the command line with `--set dotted.path=value`",
        "(`--set methods.0.options.temperature=2`).",
        "",
        "Config files are UTF-8 YAML read by a strict loader: plain values, lists and mappings only (tags such as",
        "`!!binary`, `!!set` or `!!python/...` are refused), no duplicate keys, at most 64 levels of nesting. Anchors",
        "and aliases may share values, within limits that rule out alias bombs: at most 64 aliases, none pointing",
        "at a value that holds aliases itself or at the value it sits in. Floats must be finite (`.nan` and `.inf`",
        "are refused) and a boolean is never taken for a number. Limits of MLflow (run name 250 characters, tag",
        "keys 250 characters of letters, digits and `_-.:/ `, tag values 8,000 characters) are checked before the",
        "run starts.",
        "",
        "| key | type | default | bounds | description |",
        "| --- | --- | --- | --- | --- |",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for row, field in zip(option_rows(model, prefix), model.model_fields.values(), strict=True):
            inner = inner_model(field.annotation)
            kind = "list" if "list[" in str(field.annotation) else ("mapping" if inner else row.type)
            cells = [f"`{row.name}`", kind.replace("|", "\\|"), f"`{row.default}`", row.bounds, row.description]
            lines.append("| " + " | ".join(cells) + " |")
            if inner is not None and inner is not PluginRef:
                walk(inner, f"{row.name}{'[i]' if kind == 'list' else ''}.")

    walk(RunConfig, "")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
