"""Building a run from its config: device, data, models, feature taps, methods, policy and metrics.

Everything that needs no data was checked when the config was resolved
(:func:`kdhub.registry.resolve.resolve_plugins`); what is left here needs the data or the built models
(dry-run shapes, the taps of models that name them only once built, a validation split that
came out empty).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdhub.contract.config import MetricRef, RunConfig
from kdhub.contract.errors import ConfigError, IncompatibleError, plugin_errors
from kdhub.contract.method import SetupContext
from kdhub.contract.metric import Metric
from kdhub.contract.policy import Policy, PolicyContext
from kdhub.engine import checkpoint
from kdhub.engine.data import DataSource, open_data
from kdhub.engine.distributed import DistEnv, init_distributed
from kdhub.engine.features import FeatureTaps, check_roles, dry_run_shapes
from kdhub.engine.losses import Teaching
from kdhub.registry.catalog import Registry
from kdhub.registry.student import student_spec

__all__ = ["RunParts", "build_run", "pick_device", "seed_everything"]

log = logging.getLogger("kdhub")


def pick_device(spec: str) -> torch.device:
    """``auto``: cuda, then mps, then cpu; anything else as given."""
    if spec != "auto":
        return torch.device(spec)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class RunParts:
    """Everything a run trains and evaluates with, built once from its config."""

    device: torch.device
    dist: DistEnv
    data: DataSource
    student: nn.Module
    teacher: nn.Module | None
    student_taps: dict[str, list[str]]
    teacher_taps: dict[str, list[str]]
    teaching: list[Teaching]
    policy: Policy
    metrics: list[tuple[MetricRef, Metric]]
    setup: SetupContext
    student_recorder: FeatureTaps
    teacher_recorder: FeatureTaps | None
    model_spec: dict[str, Any]
    batch_size: int
    steps_per_epoch: int

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.data.class_names

    @property
    def method_params(self) -> list[nn.Parameter]:
        """Trainable parameters of the methods (regressors, embeddings), trained with the student."""
        return [p for t in self.teaching for p in t.method.parameters() if p.requires_grad]


def build_run(
    config: RunConfig,
    registry: Registry,
    options: dict[str, Any],
    fetch: Callable[[str, str], Path],
) -> RunParts:
    """Build the run's parts; ``options`` are the validated plugin options by config path and
    ``fetch(reference, where)`` turns a teacher-weights reference (file or ``runs:/``) into a local file."""
    device = pick_device(config.train.device)
    dist = init_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    seed_everything(config.seed)
    # a study worker's next run must not inherit the previous run's choice; set only on a change, since the
    # call imports torch's compiler (about 1.5 s, which --dry-run would otherwise pay)
    if torch.are_deterministic_algorithms_enabled() != config.train.deterministic:
        torch.use_deterministic_algorithms(config.train.deterministic, warn_only=True)

    def plugin(kind: str, path: str, name: str) -> Any:
        return registry.get(kind, name)(options[path])

    with plugin_errors("data", "dataset", config.data.name):
        data = _load_data(config, plugin("dataset", "data", config.data.name), device, dist)
    batch_size = config.data.batch_size
    if batch_size > data.size("train"):  # every step would see fewer images than asked for
        raise ConfigError(
            f"data.batch_size: {batch_size} is larger than the {data.size('train'):,} training images "
            f"of {config.data.name!r} (after val_fraction / holdout_fraction / train_fraction); lower it"
        )
    steps = data.steps_per_epoch(batch_size, config.data.drop_last)

    student_plugin = plugin("model", "student", config.student.name)
    with plugin_errors("student", "model", config.student.name):
        student = student_plugin.build(data.num_classes, data.in_channels, data.image_size).to(device)
    student_taps = student_plugin.taps(student)
    teacher, teacher_taps = None, {}
    if config.teacher is not None:
        teacher_plugin = plugin("model", "teacher", config.teacher.name)
        with plugin_errors("teacher", "model", config.teacher.name):
            teacher = teacher_plugin.build(data.num_classes, data.in_channels, data.image_size).to(device)
        teacher_taps = teacher_plugin.taps(teacher)
        if config.teacher.weights:
            reference = config.teacher.weights
            path = fetch(reference, "teacher.weights")
            checkpoint.load_weights(teacher, path, f"teacher.weights ({reference})")
        else:
            log.warning("teacher has no weights: distilling from a randomly initialised %s", config.teacher.name)
        teacher.eval().requires_grad_(False)

    teaching = [
        Teaching(
            plugin("method", f"methods.{i}", ref.name),
            ref.weight if ref.weight is not None else registry.get("method", ref.name).default_weight,
            ref.name,
        )
        for i, ref in enumerate(config.methods)
    ]
    metrics = [(ref, plugin("metric", f"metrics.{i}", ref.name)) for i, ref in enumerate(config.metrics)]
    _check_built_roles(config, teaching, metrics, student_taps, teacher_taps, teacher is not None)

    example = data.example(2)
    student_shapes, _ = dry_run_shapes(student, student_taps, example)
    teacher_shapes = dry_run_shapes(teacher, teacher_taps, example)[0] if teacher is not None else {}
    setup = SetupContext(
        num_classes=data.num_classes,
        num_train=data.size("train"),
        epochs=config.epochs,
        steps_per_epoch=steps,
        student=student,
        teacher=teacher,
        student_taps=student_taps,
        teacher_taps=teacher_taps,
        student_shapes=student_shapes,
        teacher_shapes=teacher_shapes,
        train_labels=data.labels("train"),
        device=device,
    )
    for t in teaching:
        try:
            t.method.setup(setup)
        except IncompatibleError as err:
            raise IncompatibleError(f"methods: method {t.key!r}: {err}") from None
        t.method.to(device)
    roles = {r for t in teaching for r in t.method.feature_roles}

    policy = plugin("policy", "policy", config.policy.name)
    policy.setup(
        PolicyContext(
            epochs=config.epochs,
            steps_per_epoch=steps,
            num_classes=data.num_classes,
            ce_weight=config.ce_weight,
            device=device,
            has_validation=data.has("val"),
            class_names=data.class_names,
            validation_class_counts=(
                torch.bincount(data.labels("val"), minlength=data.num_classes).cpu() if data.has("val") else None
            ),
            method_names=[t.key for t in teaching],
        )
    )
    if config.train.channels_last:
        student = student.to(memory_format=torch.channels_last)
    return RunParts(
        device=device,
        dist=dist,
        data=data,
        student=student,
        teacher=teacher,
        student_taps=student_taps,
        teacher_taps=teacher_taps,
        teaching=teaching,
        policy=policy,
        metrics=metrics,
        setup=setup,
        student_recorder=FeatureTaps(student, student_taps, roles),
        teacher_recorder=FeatureTaps(teacher, teacher_taps, roles) if teacher is not None else None,
        model_spec=student_spec(config, data),
        batch_size=batch_size,
        steps_per_epoch=steps,
    )


def _load_data(config: RunConfig, dataset: Any, device: torch.device, dist: DistEnv) -> DataSource:
    data = open_data(
        dataset.load(),
        device,
        val_fraction=config.data.val_fraction,
        holdout_fraction=config.data.holdout_fraction,
        train_fraction=config.data.train_fraction,
        seed=config.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        name=config.data.name,
        loader=config.data,
    )
    for split, key in (("val", "val_fraction"), ("holdout", "holdout_fraction")):
        if getattr(config.data, key) > 0 and not data.has(split):
            raise ConfigError(
                f"data.{key}: {getattr(config.data, key)} of the {data.size('train')} training images"
                f" holds out no image; raise it"
            )
    return data


def _check_built_roles(
    config: RunConfig,
    teaching: list[Teaching],
    metrics: list[tuple[MetricRef, Metric]],
    student_taps: dict[str, list[str]],
    teacher_taps: dict[str, list[str]],
    has_teacher: bool,
) -> None:
    """Feature roles against the taps of the built models (for models that name them only once built)."""
    users = [(f"methods: method {t.key!r}", t.method.feature_roles) for t in teaching]
    users += [(f"metrics.{i}: metric {ref.name!r}", m.feature_roles) for i, (ref, m) in enumerate(metrics)]
    for who, roles in users:
        check_roles(who, config.student.name, student_taps, roles, "student")
        if has_teacher and config.teacher is not None:
            check_roles(who, config.teacher.name, teacher_taps, roles, "teacher")
