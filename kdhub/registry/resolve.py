"""A run config against the installed plugins: every plugin name and its options, and everything
about the run that needs no data (a teacher where one is needed, feature roles, the device)."""

from __future__ import annotations

from typing import Any

from kdhub.contract.config import PluginRef, RunConfig
from kdhub.contract.errors import ConfigError, KdhubError
from kdhub.registry.catalog import Registry

__all__ = ["check_device", "resolve_plugins"]


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
