"""``kdhub evaluate``: overall and per-class accuracy of any student checkpoint on any dataset of its classes.

The checkpoint is rebuilt from its model spec (see :mod:`kdhub.export`); the data are a dataset
plugin with its options (``--set data.options.root=...``), split as a run would split it
(``--set data.val_fraction=0.1 --set seed=1`` gives a run's validation split) and normalised with
the dataset's own mean and std, as a kdhub run on that dataset would be. With ``--log`` the result
becomes an MLflow run (``kdhub.kind = evaluate``) holding the split as a dataset input, the
accuracies and the table ``<split>/per_class_accuracy`` in the schema the ``per_class_accuracy``
metric logs, so ``kdhub compare`` reads evaluations like training runs.
"""

from __future__ import annotations

import argparse
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, ValidationError

from kdhub.contract.base import StrictModel
from kdhub.contract.config import DataConfig, PluginRef
from kdhub.contract.config_loading import apply_overrides
from kdhub.contract.errors import ConfigError, KdhubError
from kdhub.contract.validation import format_validation_error
from kdhub.registry.loading import get_registry
from kdhub.registry.student import load_checkpoint, network_from_checkpoint
from kdhub.tracking import KIND_TAG, Tracker, flatten, model_label, resolve_weights, tracking_uri

__all__ = ["EvaluationConfig", "add_arguments", "evaluate", "report"]

DEFAULT_EXPERIMENT = "kdhub-evaluate"


class EvaluationConfig(StrictModel):
    """The data side of an evaluation (``--data NAME`` and ``--set`` paths), as strict as a run config."""

    seed: int = Field(0, ge=0, description="seed of the validation split (as the run's)")
    data: DataConfig = Field(description="dataset plugin, options and splits")


def _data_config(name: str, overrides: list[str]) -> EvaluationConfig:
    raw = apply_overrides({"data": {"name": name}}, overrides)
    try:
        return EvaluationConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, EvaluationConfig).splitlines()[0]) from None


@torch.no_grad()
def evaluate(
    checkpoint: dict[str, Any],
    config: EvaluationConfig,
    split: str = "test",
    device: str = "auto",
    label: str = "checkpoint",
) -> dict[str, Any]:
    """Accuracy (%) overall and per class of the checkpoint's network on ``split`` of the dataset."""
    # deferred: `kdhub --help` imports this module for its arguments (start-up time)
    from kdhub.engine.data import open_data
    from kdhub.engine.loop import pick_device

    registry = get_registry()
    try:
        options = registry.options("dataset", config.data.name, config.data.options, where="data.options")
    except KdhubError as err:
        raise ConfigError(f"--data: {err}") from None
    spec = checkpoint["model_spec"]
    where = pick_device(device)
    try:
        bundle = registry.get("dataset", config.data.name)(options).load()
    except KdhubError:
        raise
    except Exception as err:  # a plugin's own failure, one line
        raise KdhubError(f"--data {config.data.name}: cannot load: {type(err).__name__}: {err}") from None
    data = open_data(
        bundle,
        where,
        val_fraction=config.data.val_fraction,
        train_fraction=config.data.train_fraction,
        seed=config.seed,
        name=config.data.name,
    )
    if not data.has(split):
        raise ConfigError(f"--split {split}: the data have no {split} split (set data.val_fraction > 0 for val)")
    if data.num_classes != int(spec["num_classes"]):
        raise KdhubError(
            f"--data {config.data.name}: {data.num_classes} classes, the model predicts {spec['num_classes']}"
        )
    shape = (data.in_channels, data.image_size, data.image_size)
    recorded = (spec.get("in_channels"), spec.get("image_size"))
    if recorded[0] is not None and (recorded[0], recorded[1]) != (shape[0], shape[1]):
        raise KdhubError(
            f"--data {config.data.name}: images {shape[0]}x{shape[1]}x{shape[2]},"
            f" the model was trained on {recorded[0]}x{recorded[1]}x{recorded[1]}"
        )
    net = network_from_checkpoint(checkpoint, label, shape).to(where)
    counts = torch.zeros(data.num_classes, dtype=torch.float64, device=where)
    correct = torch.zeros(data.num_classes, dtype=torch.float64, device=where)
    for images, labels, _ in data.eval_batches(split, config.data.eval_batch_size):
        hits = (net(images).argmax(1) == labels).double()
        counts += torch.bincount(labels, minlength=data.num_classes)
        correct += torch.bincount(labels, weights=hits, minlength=data.num_classes)
    per_class = (100 * correct / counts).cpu().tolist()  # an empty class: 0/0 = NaN
    names_match = [str(n) for n in data.class_names] == [str(n) for n in spec.get("class_names", data.class_names)]
    return {
        "accuracy": 100 * float(correct.sum() / counts.sum().clamp(min=1)),
        "table": {
            "class": list(range(data.num_classes)),
            "name": list(data.class_names),
            "count": [int(n) for n in counts.cpu().tolist()],
            "student": per_class,
        },
        "data": data.describe(split),
        "class_names_match": names_match,
        "spec": spec,
    }


def _nan_stats(values: list[float]) -> tuple[float, float]:
    kept = [v for v in values if math.isfinite(v)]
    return (sum(kept) / len(kept), min(kept)) if kept else (math.nan, math.nan)


def report(result: dict[str, Any], split: str) -> str:
    """The overall accuracy, the mean and worst class, and a per-class table, as text."""
    table = result["table"]
    mean, worst = _nan_stats(table["student"])
    info = result["data"]
    lines = [
        f"{info['name']} {split}: {info['num_samples']:,} images, {info['num_classes']} classes"
        f" (digest {info['digest']})",
        f"accuracy {result['accuracy']:.2f} %   mean per class {mean:.2f} %   worst class {worst:.2f} %",
    ]
    if not result["class_names_match"]:
        lines.append("note: the class names differ from the training data's; classes are matched by index")
    width = max([4, *(len(str(n)) for n in table["name"])])
    lines.append(f"{'class':>5}  {'name':<{width}} {'count':>7} {'accuracy':>9}")
    for c, name, count, acc in zip(table["class"], table["name"], table["count"], table["student"], strict=True):
        shown = f"{acc:.2f}" if math.isfinite(acc) else "-"
        lines.append(f"{c:>5}  {name!s:<{width}} {count:>7} {shown:>9}")
    return "\n".join(lines)


def _log(args: argparse.Namespace, result: dict[str, Any], label: str) -> str:
    split, info, spec = args.split, result["data"], result["spec"]
    student = model_label(PluginRef(name=spec["name"], options=spec.get("options") or {}))
    tracker = Tracker(tracking_uri(args.tracking_uri), args.experiment)
    tags = {KIND_TAG: "evaluate", "student": student, "dataset": info["name"], "kdhub.evaluated": args.source}
    if re.fullmatch(r"[0-9a-f]{32}", args.source):
        tags["kdhub.evaluated_run"] = args.source
    elif args.source.startswith("runs:/"):
        tags["kdhub.evaluated_run"] = args.source.split("/")[1]
    run_id = tracker.start(f"evaluate-{label}-{info['name']}-{split}", tags)
    try:
        tracker.params({"weights": args.source, "split": split, **flatten(args.data_config.model_dump(mode="json"))})
        tracker.datasets({split: info})
        mean, worst = _nan_stats(result["table"]["student"])
        values = {f"{split}/acc": result["accuracy"], f"{split}/per_class_accuracy/mean_class_acc": mean}
        values[f"{split}/per_class_accuracy/worst_class_acc"] = worst
        tracker.metrics({k: v for k, v in values.items() if math.isfinite(v)}, step=0)
        tracker.table(f"{split}/per_class_accuracy", result["table"])
        tracker.describe(
            f"Evaluates **{student}** (`{args.source}`, trained on {spec.get('dataset', '?')}) on"
            f" **{info['name']}** split {split} ({info['num_samples']:,} images): accuracy"
            f" **{result['accuracy']:.2f} %**, mean per class {mean:.2f} %, worst class {worst:.2f} %."
        )
    except BaseException as err:
        tracker.finish("FAILED", f"{type(err).__name__}: {err}")
        raise
    tracker.finish("FINISHED")
    return run_id


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.split not in ("train", "val", "test"):
        raise KdhubError(f"--split: expected train, val or test, got {args.split!r}")
    if args.batch_size is not None:
        args.set = [*args.set, f"data.eval_batch_size={args.batch_size}"]
    args.data_config = _data_config(args.data, args.set)
    with tempfile.TemporaryDirectory(prefix="kdhub-") as folder:
        path, label = resolve_weights(args.source, args.tracking_uri, Path(folder))
        checkpoint = load_checkpoint(path, args.source)
    result = evaluate(checkpoint, args.data_config, args.split, args.device, args.source)
    print(report(result, args.split))
    if args.log:
        print(f"logged as MLflow run {_log(args, result, label)} (experiment {args.experiment})")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``kdhub evaluate SOURCE --data NAME [--split test] [--set ...] [--log]``."""
    p.add_argument(
        "source", metavar="RUN_ID|PATH", help="run id, checkpoint file, runs:/<run>/<path> or models:/NAME/VERSION"
    )
    p.add_argument("--data", required=True, metavar="NAME", help="dataset plugin (kdhub list dataset)")
    p.add_argument("--split", default="test", metavar="train|val|test", help="split to evaluate (test)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="data settings: data.options.root=..., data.val_fraction=0.1, seed=1",
    )
    p.add_argument("--batch-size", type=int, help="evaluation batch size (default data.eval_batch_size)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--log", action="store_true", help="log the result as a new MLflow run")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"experiment of --log ({DEFAULT_EXPERIMENT})")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
