"""kdhub: a knowledge-distillation workbench where every method, policy and metric is a plugin.

This module is the public API: what a plugin author or a notebook imports (``kdhub.Method``,
``kdhub.Options``, ``kdhub.run`` ...) is listed in ``__all__``; test helpers for plugins are in
:mod:`kdhub.testing`. The code is in layer packages, each importing only from the layers below
(CONTRIBUTING.md): :mod:`kdhub.contract`, :mod:`kdhub.registry`, :mod:`kdhub.tracking`,
:mod:`kdhub.engine`, :mod:`kdhub.study`, :mod:`kdhub.commands`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kdhub import _moved
from kdhub.contract.version import __version__

if TYPE_CHECKING:  # what each name below is, for type checkers and IDEs; at run time __getattr__ imports it
    from kdhub.contract.base import EpochOrFraction, FiniteFloat, Options, Plugin, resolve_epoch
    from kdhub.contract.command import Command
    from kdhub.contract.dataset import (
        Augmentation,
        DataBundle,
        Dataset,
        FileDataset,
        FileSplit,
        ImageTransforms,
        TensorSplit,
    )
    from kdhub.contract.errors import (
        ConfigError,
        ContractError,
        DivergedError,
        IncompatibleError,
        KdhubError,
        PluginLoadError,
        PluginNotFoundError,
        RunFailedError,
    )
    from kdhub.contract.hookspecs import hookimpl
    from kdhub.contract.method import LossValue, Method, SetupContext, StepOutputs
    from kdhub.contract.metric import EvalBatch, Metric, MetricContext, MetricResult
    from kdhub.contract.model import FEATURE_ROLES, Model
    from kdhub.contract.outputs import Outputs
    from kdhub.contract.policy import EpochAction, EpochReport, Policy, PolicyContext, StepPlan
    from kdhub.contract.runlog import MemoryLog, RunLog, Table
    from kdhub.contract.runview import RunView
    from kdhub.contract.tables import AGREEMENT, PER_CLASS_ACCURACY, TableSchema
    from kdhub.registry.loading import get_registry as get_registry  # not in __all__, kept as an attribute
    from kdhub.registry.loading import plugin_classes

_moved.install()  # the former module paths (kdhub.config, kdhub.plugins ...) still import, with a warning

_LAZY: dict[str, tuple[str, ...]] = {
    "kdhub.contract.base": ("EpochOrFraction", "FiniteFloat", "Options", "Plugin", "resolve_epoch"),
    "kdhub.contract.command": ("Command",),
    "kdhub.contract.dataset": (
        "Augmentation",
        "DataBundle",
        "Dataset",
        "FileDataset",
        "FileSplit",
        "ImageTransforms",
        "TensorSplit",
    ),
    "kdhub.contract.errors": (
        "ConfigError",
        "ContractError",
        "DivergedError",
        "IncompatibleError",
        "KdhubError",
        "PluginLoadError",
        "PluginNotFoundError",
        "RunFailedError",
    ),
    "kdhub.contract.hookspecs": ("hookimpl",),
    "kdhub.contract.method": ("LossValue", "Method", "SetupContext", "StepOutputs"),
    "kdhub.contract.metric": ("EvalBatch", "Metric", "MetricContext", "MetricResult"),
    "kdhub.contract.model": ("FEATURE_ROLES", "Model"),
    "kdhub.contract.outputs": ("Outputs",),
    "kdhub.contract.policy": ("EpochAction", "EpochReport", "Policy", "PolicyContext", "StepPlan"),
    "kdhub.contract.runlog": ("MemoryLog", "RunLog", "Table"),
    "kdhub.contract.runview": ("RunView",),
    "kdhub.contract.tables": ("AGREEMENT", "PER_CLASS_ACCURACY", "TableSchema"),
    "kdhub.registry.loading": ("get_registry", "plugin_classes"),
}
"""The module each public name is imported from on first use (as the ``TYPE_CHECKING`` imports say):
``import kdhub`` loads neither torch nor the registry, so ``kdhub --help`` starts fast."""
_HOME = {name: module for module, names in _LAZY.items() for name in names}
_SUBPACKAGES = frozenset({"contract", "registry", "tracking", "engine", "study", "commands", "testing", "cli"})

__all__ = [
    "AGREEMENT",
    "FEATURE_ROLES",
    "PER_CLASS_ACCURACY",
    "Augmentation",
    "Command",
    "ConfigError",
    "ContractError",
    "DataBundle",
    "Dataset",
    "DivergedError",
    "EpochAction",
    "EpochOrFraction",
    "EpochReport",
    "EvalBatch",
    "FileDataset",
    "FileSplit",
    "FiniteFloat",
    "ImageTransforms",
    "IncompatibleError",
    "KdhubError",
    "LossValue",
    "MemoryLog",
    "Method",
    "Metric",
    "MetricContext",
    "MetricResult",
    "Model",
    "Options",
    "Outputs",
    "Plugin",
    "PluginLoadError",
    "PluginNotFoundError",
    "Policy",
    "PolicyContext",
    "RunFailedError",
    "RunLog",
    "RunView",
    "SetupContext",
    "StepOutputs",
    "StepPlan",
    "Table",
    "TableSchema",
    "TensorSplit",
    "__version__",
    "create",
    "get_plugin",
    "hookimpl",
    "list_plugins",
    "plugin_classes",
    "resolve_epoch",
    "run",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (PEP 562); kept in the module afterwards."""
    module = _HOME.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif name in _SUBPACKAGES:  # `import kdhub` then `kdhub.registry...`: the package, imported on use
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


def run(config: Any, resume_run_id: str | None = None, track: bool = True) -> Any:
    """Train one run from a config (a YAML-shaped dict or a ``RunConfig``), logged to MLflow unless
    ``track`` is False; returns a ``RunResult``. See :func:`kdhub.engine.runner.run`."""
    # deferred: `import kdhub` does not load the engine (start-up time)
    from kdhub.engine.runner import run as run_one

    return run_one(config, resume_run_id=resume_run_id, track=track)


def list_plugins(kind: str, pattern: str = "*") -> list[str]:
    """Names of the plugins of ``kind`` matching a glob ``pattern``: ``list_plugins("method", "*kd*")``."""
    # deferred: `import kdhub` loads no plugin and not torch (start-up time)
    from kdhub.registry.loading import get_registry

    return get_registry().names(kind, pattern)


def get_plugin(kind: str, name: str) -> type:
    """The plugin class (with its ``Options`` and docstring); unknown names list close matches."""
    # deferred: `import kdhub` loads no plugin and not torch (start-up time)
    from kdhub.registry.loading import get_registry

    return get_registry().get(kind, name)


def create(kind: str, name: str, **options: Any) -> Any:
    """A plugin instance with validated options: ``create("method", "kd", temperature=2.0)``."""
    # deferred: `import kdhub` loads no plugin and not torch (start-up time)
    from kdhub.registry.loading import get_registry

    return get_registry().create(kind, name, **options)
