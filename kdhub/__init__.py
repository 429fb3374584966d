"""kdhub: a knowledge-distillation workbench where every method, policy and metric is a plugin.

This module is the public API: what a plugin author or a notebook imports (``kdhub.Method``,
``kdhub.Options``, ``kdhub.run`` ...) is listed in ``__all__``; test helpers for plugins are in
:mod:`kdhub.testing`. The code is in layer packages, each importing only from the layers below
(CONTRIBUTING.md): :mod:`kdhub.contract`, :mod:`kdhub.registry`, :mod:`kdhub.tracking`,
:mod:`kdhub.engine`, :mod:`kdhub.study`, :mod:`kdhub.commands`.
"""

from __future__ import annotations

from typing import Any

from kdhub import _moved
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
from kdhub.contract.version import __version__
from kdhub.registry.loading import get_registry, plugin_classes

_moved.install()  # the former module paths (kdhub.config, kdhub.plugins ...) still import, with a warning

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


def run(config: Any, resume_run_id: str | None = None, track: bool = True) -> Any:
    """Train one run from a config (a YAML-shaped dict or a ``RunConfig``), logged to MLflow unless
    ``track`` is False; returns a ``RunResult``. See :func:`kdhub.engine.runner.run`."""
    # deferred: `import kdhub` does not load the engine (start-up time)
    from kdhub.engine.runner import run as run_one

    return run_one(config, resume_run_id=resume_run_id, track=track)


def list_plugins(kind: str, pattern: str = "*") -> list[str]:
    """Names of the plugins of ``kind`` matching a glob ``pattern``: ``list_plugins("method", "*kd*")``."""
    return get_registry().names(kind, pattern)


def get_plugin(kind: str, name: str) -> type:
    """The plugin class (with its ``Options`` and docstring); unknown names list close matches."""
    return get_registry().get(kind, name)


def create(kind: str, name: str, **options: Any) -> Any:
    """A plugin instance with validated options: ``create("method", "kd", temperature=2.0)``."""
    return get_registry().create(kind, name, **options)
