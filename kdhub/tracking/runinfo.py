"""What a run is called and tagged with: params that apply, tags, names, the command line and git commit."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdhub.contract.version import __version__
from kdhub.registry.loading import get_registry
from kdhub.tracking.artifacts import teacher_links
from kdhub.tracking.store import _MAX_TAG, KIND_TAG

if TYPE_CHECKING:
    from kdhub.contract.config import PluginRef, RunConfig


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts and lists as ``a.b.0.c`` keys with string values (MLflow params)."""
    out: dict[str, str] = {}
    if isinstance(data, dict) and data:
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list) and data and any(isinstance(v, (dict, list)) for v in data):
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}.{i}"))
    else:
        out[prefix] = json.dumps(data) if isinstance(data, (list, dict)) else str(data)
    return out


_BAD_KEY_CHARS = re.compile(r"[^0-9A-Za-z_\-. /]")


def safe_metric_name(key: str) -> str:
    """A readable MLflow metric / param key: ``compare/kd[temperature=1,alpha=0.5]/pearson_r`` becomes
    ``compare/kd temperature 1 alpha 0.5/pearson_r``.

    MLflow keys allow letters, digits, ``_ - . /`` and spaces (colons are refused on Windows), and
    must not normalise to another path: brackets, ``=`` and commas become spaces, other characters
    ``_``, and empty or dot-only path segments go.
    """
    text = re.sub(r"[\[\]=,;()]", " ", key)
    text = _BAD_KEY_CHARS.sub("_", text)
    parts = [" ".join(part.split()) for part in text.split("/")]
    parts = [p for p in parts if p and p not in (".", "..")]
    return "/".join(parts) or "_"


def _safe_key(key: str) -> str:
    return key if re.fullmatch(r"[0-9A-Za-z_\-.]+(/[0-9A-Za-z_\-.]+)*", key) else safe_metric_name(key)


def compare_experiment(experiment: str) -> str:
    """The experiment comparison runs go to by default, so they do not crowd the training charts."""
    return f"{experiment}-compare"


@contextmanager
def _global_uri(uri: str) -> Iterator[None]:
    """MLflow's model APIs read the global tracking URI: set it for the block only."""
    import mlflow

    try:
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    except ImportError:  # a private helper; fall back to setting and restoring
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)
        return
    with _use_tracking_uri(uri):
        yield


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this process, as a user would type it (``kdhub run cfg.yaml``).

    ``--tracking-uri`` and its value are left out: the run is in that store already, and a URI may
    carry credentials (``https://user:token@host``).
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "python"
    args, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg == "--tracking-uri":
            skip = True
        elif not arg.startswith("--tracking-uri="):
            args.append(arg)
    first = Path(argv[0])
    if first.name == "kdhub" or (first.parent.name == "kdhub" and first.name in ("cli.py", "__main__.py")):
        return shlex.join(["kdhub", *args])
    return shlex.join([first.name or "python", *args])


def source_name(argv: list[str] | None = None) -> str:
    """What the runs table's *Source* column shows (``mlflow.source.name``): the config file of
    ``kdhub run FILE`` or ``kdhub study FILE`` as typed (the UI shows its file name), else the command
    line (``kdhub demo``, ``kdhub run --resume ID``)."""
    argv = list(sys.argv if argv is None else argv)
    for arg in argv[1:]:
        if not arg.startswith("-") and arg.lower().endswith((".yaml", ".yml", ".json")) and Path(arg).is_file():
            return arg
    return command_line(argv)


def git_tags(cwd: str | Path | None = None) -> dict[str, str]:
    """``mlflow.source.git.commit`` (and branch, and whether tracked files differ) of the working directory."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    tags = {"mlflow.source.git.commit": commit}
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    status = git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        tags["kdhub.git.dirty"] = "true" if status else "false"
    return tags


def _source_tags() -> dict[str, str]:
    import getpass

    tags = {
        "mlflow.source.name": source_name()[:_MAX_TAG],
        "mlflow.source.type": "LOCAL",
        "kdhub.command": command_line()[:_MAX_TAG],
        **git_tags(),
    }
    with contextlib.suppress(KeyError, OSError):  # no user name in some containers
        tags["mlflow.user"] = getpass.getuser()
    return tags


# what a run logs ------------------------------------------------------------------------------------


_OPTIMIZER_KEYS = {"sgd": ("momentum", "nesterov"), "adamw": ("betas",)}
_SCHEDULE_KEYS = {"multistep": ("milestones", "gamma"), "cosine": ("min_lr",), "constant": ()}


def run_params(config: RunConfig, options: dict[str, Any], device: str | None = None) -> dict[str, str]:
    """Flattened params that apply to this run: ``method.kd.temperature``, ``optim.lr``, ... with defaults.

    Options of the optimizer and schedule the run does not use are left out (no AdamW betas on an
    SGD run, no milestones on a cosine run), and so are ``ce_weight`` (when 1) and ``policy.*`` (when
    the default policy) on a run without a distillation method, where they change nothing;
    ``train.device`` is ``device`` (the one used) when given.
    """
    params: dict[str, str] = {"seed": str(config.seed), "epochs": str(config.epochs)}
    distils = bool(config.methods)  # without a method, a default ce_weight and policy change nothing
    if distils or config.ce_weight != 1.0:
        params["ce_weight"] = str(config.ce_weight)
    optim = config.optim.model_dump(mode="json")
    for other, keys in _OPTIMIZER_KEYS.items():
        if other != config.optim.name:
            for key in keys:
                optim.pop(key, None)
    schedule = config.schedule.model_dump(mode="json")
    for other, keys in _SCHEDULE_KEYS.items():
        if other != config.schedule.name:
            for key in keys:
                schedule.pop(key, None)
    train = config.train.model_dump(mode="json")
    if device is not None:
        train["device"] = device
    for section, values in (("optim", optim), ("schedule", schedule), ("train", train)):
        params.update(flatten(values, section))
    params.update(flatten(config.checkpoint.model_dump(mode="json"), "checkpoint"))
    data = config.data.model_dump(mode="json", exclude={"options"})
    params.update(flatten(data, "data"))
    params.update(flatten(options["data"].model_dump(mode="json"), "data.options"))
    params.update(flatten({"name": config.student.name, **options["student"].model_dump(mode="json")}, "student"))
    if config.teacher is not None:
        t = {
            "name": config.teacher.name,
            "weights": config.teacher.weights,
            **options["teacher"].model_dump(mode="json"),
        }
        params.update(flatten(t, "teacher"))
    for i, ref in enumerate(config.methods):
        weight = ref.weight if ref.weight is not None else _default_weight(ref.name)
        values = {"weight": weight, **options[f"methods.{i}"].model_dump(mode="json")}
        params.update(flatten(values, f"method.{ref.name}"))
    if distils or config.policy != type(config).model_fields["policy"].get_default(call_default_factory=True):
        params.update(flatten({"name": config.policy.name, **options["policy"].model_dump(mode="json")}, "policy"))
    for i, metric in enumerate(config.metrics):
        values = {"split": metric.split, "every": metric.every, **options[f"metrics.{i}"].model_dump(mode="json")}
        params.update(flatten(values, f"metric.{metric.name}"))
    return params


def _default_weight(method: str) -> float:
    return float(getattr(get_registry().get("method", method), "default_weight", 1.0))


def model_label(ref: PluginRef | None) -> str:
    """A plugin with the options its config sets: ``cnn(width=32)``, ``resnet8x4``, ``none``."""
    if ref is None:
        return "none"
    if not ref.options:
        return ref.name
    text = ", ".join(f"{k}={_option_text(v)}" for k, v in ref.options.items())
    return f"{ref.name}({text})"[:_MAX_TAG]


def _option_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _used_plugins(config: RunConfig) -> list[tuple[str, str]]:
    used = [("dataset", config.data.name), ("model", config.student.name), ("policy", config.policy.name)]
    if config.teacher is not None:
        used.append(("model", config.teacher.name))
    used += [("method", m.name) for m in config.methods] + [("metric", m.name) for m in config.metrics]
    return used


def run_tags(config: RunConfig) -> dict[str, str]:
    """Tags of a training run: its models (``cnn(width=32)``), methods, policy, data, seed, the teacher's
    run or registered model, and the versions of the plugin distributions it uses (besides kdhub)."""
    tags = {
        KIND_TAG: "train",
        "kdhub.version": __version__,
        "student": model_label(config.student),
        "teacher": model_label(config.teacher),
        "method": ",".join(m.name for m in config.methods) or "none",
        "policy": config.policy.name,
        "dataset": config.data.name,
        "seed": str(config.seed),
    }
    if config.teacher is not None:
        tags.update(teacher_links(config.teacher.weights, config.tracking.uri))
    registry = get_registry()
    for kind, name in _used_plugins(config):
        entry = registry.entry(kind, name)
        if entry.source != "kdhub":
            tags[f"kdhub.plugin.{entry.source}"] = entry.version or "local"
    tags.update(config.tracking.tags)
    return tags


def default_run_name(config: RunConfig) -> str:
    if config.teacher is None:
        return f"{config.student.name}-{config.data.name}-s{config.seed}"
    methods = "+".join(m.name for m in config.methods) or "none"
    return f"{config.teacher.name}-{methods}-{config.student.name}-{config.data.name}-s{config.seed}"


def study_run_tags(study: str, run: str, grid: str, seed: int, parent_run_id: str) -> dict[str, str]:
    """Tags of a study's child run: nested under the parent, with the study, run name, grid point and seed.

    ``grid`` is the grid point's label (``temperature=4``, empty without a grid). The study's parent
    run takes ``{KIND_TAG: "study", "kdhub.study": study}``; its metrics go through
    :func:`safe_metric_name` (``compare/kd temperature 4/mean_delta_acc``).
    """
    return {
        "mlflow.parentRunId": parent_run_id,
        "kdhub.study": study,
        "kdhub.study_run": run,
        "kdhub.grid": grid or "none",
        "seed": str(seed),
    }
