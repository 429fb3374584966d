"""The run config's schema: one YAML file validated by pydantic (loading it: :mod:`kdhub.contract.config_loading`)."""

from __future__ import annotations

import re
import warnings
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from kdhub.contract.base import EpochOrFraction, FiniteFloat, StrictModel
from kdhub.contract.errors import ConfigError
from kdhub.contract.limits import (
    MAX_EXPERIMENT_NAME_LENGTH,
    MAX_RUN_NAME_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    tag_problem,
    uri_problem,
)
from kdhub.contract.validation import shown

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
]

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
        "runs:/<run_id>/checkpoints/final.pt, models:/NAME/VERSION, models:/NAME@ALIAS or models:/<model id> "
        "(a student kdhub logged, resolved in the run's tracking store)",
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
        model_name: str | None = Field(
            None,
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
            max_length=256,
            description="name of the run's logged MLflow model (default: 'student' when the run distils, 'model' "
            "when it trains with labels only, e.g. a teacher or a vanilla baseline)",
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
