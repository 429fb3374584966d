"""kdhub: a knowledge-distillation workbench where every method, policy and metric is a plugin."""

from __future__ import annotations

from typing import Any

from kdhub.base import EpochOrFraction, FiniteFloat, Options, Plugin, resolve_epoch
from kdhub.command import Command
from kdhub.dataset import (
    Augmentation,
    DataBundle,
    Dataset,
    FileDataset,
    FileSplit,
    ImageTransforms,
    TensorSplit,
)
from kdhub.errors import (
    ConfigError,
    ContractError,
    DivergedError,
    IncompatibleError,
    KdhubError,
    PluginLoadError,
    PluginNotFoundError,
    RunFailedError,
)
from kdhub.hookspecs import hookimpl
from kdhub.method import LossValue, Method, SetupContext, StepOutputs
from kdhub.metric import EvalBatch, Metric, MetricContext, MetricResult
from kdhub.model import FEATURE_ROLES, Model
from kdhub.outputs import Outputs
from kdhub.plugins import plugin_classes
from kdhub.policy import EpochAction, EpochReport, Policy, PolicyContext, StepPlan
from kdhub.runlog import MemoryLog, RunLog, Table
from kdhub.runview import RunView
from kdhub.tables import AGREEMENT, PER_CLASS_ACCURACY, TableSchema

__version__ = "0.1.0"

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
    from kdhub.engine.runner import run as run_one

    return run_one(config, resume_run_id=resume_run_id, track=track)


def list_plugins(kind: str, pattern: str = "*") -> list[str]:
    """Names of the plugins of ``kind`` matching a glob ``pattern``: ``list_plugins("method", "*kd*")``."""
    from kdhub.plugins import get_registry

    return get_registry().names(kind, pattern)


def get_plugin(kind: str, name: str) -> type:
    """The plugin class (with its ``Options`` and docstring); unknown names list close matches."""
    from kdhub.plugins import get_registry

    return get_registry().get(kind, name)


def create(kind: str, name: str, **options: Any) -> Any:
    """A plugin instance with validated options: ``create("method", "kd", temperature=2.0)``."""
    from kdhub.plugins import get_registry

    return get_registry().create(kind, name, **options)
