"""How much the analysis metrics slow a run down when they are evaluated every 10 epochs.

The same KD run (seed, data, models, steps) is timed in one process with ``metrics: []`` and with
analysis metrics scheduled ``every: 10`` (evaluated after epoch 10 and at the end of a 20-epoch
run): every one of them (``all``), all but ``embedding`` (t-SNE), and the ``light`` ones (all but
``embedding``, ``cka`` and ``interpolation``). Metrics run on the test split, ``interpolation`` on
the training set (its only meaningful split). Runs alternate (none, all, ..., none, all, ...) and
the medians are reported with their ratios to the run without metrics; then each metric's single
evaluation is timed on its own, to show where the time goes. Nothing is logged to MLflow
(``track=False``): this measures the evaluation, not the tracking store.

Data: a fixed-seed subset of Fashion-MNIST (default 12,000 training and 2,000 test images, the
6:1 ratio of the full set) or the embedded digits data::

    .venv/bin/python benchmarks/metric_overhead.py                       # fashion subset, 20 epochs, 3 repeats
    .venv/bin/python benchmarks/metric_overhead.py --data digits --epochs 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
from pydantic import Field

import kdhub
from kdhub.contract.config_loading import parse_config
from kdhub.engine.loop import Trainer, pick_device
from kdhub.engine.runner import run
from kdhub.registry import loading as plugins

ANALYSIS_METRICS = [
    "per_class_accuracy",
    "agreement",
    "fidelity",
    "calibration",
    "cka",
    "confidence",
    "interpolation",
    "embedding",
    "eigenspace",
]
SPLIT = {"interpolation": "train"}


class FashionSubset(kdhub.Dataset):
    """A fixed-seed random subset of Fashion-MNIST's training and test sets (benchmark only)."""

    name = "fashion_subset"

    class Options(kdhub.Options):
        root: str = Field("data", description="torchvision root folder of fashion_mnist")
        train_size: int = Field(12000, ge=1, description="training images kept")
        test_size: int = Field(2000, ge=1, description="test images kept")

    def load(self) -> kdhub.DataBundle:
        full = kdhub.create("dataset", "fashion_mnist", root=self.options.root).load()
        gen = torch.Generator().manual_seed(0)
        train = torch.randperm(len(full.train), generator=gen)[: self.options.train_size]
        test = torch.randperm(len(full.test), generator=gen)[: self.options.test_size]
        full.train, full.test = full.train.subset(train), full.test.subset(test)
        return full


class _Register:
    @kdhub.hookimpl
    def kdhub_register_datasets(self, register: Any) -> None:
        register(FashionSubset)


def config(args: argparse.Namespace, metrics: list[Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "digits", "batch_size": 64}
    if args.data == "fashion":
        data = {
            "name": "fashion_subset",
            "batch_size": 128,
            "options": {"root": args.root, "train_size": args.train_size, "test_size": args.test_size},
        }
    return {
        "seed": 0,
        "epochs": args.epochs,
        "data": data,
        "student": {"name": "cnn", "options": {"width": 8}},
        "teacher": {"name": "cnn", "options": {"width": 16}},  # untrained: the speed is the same
        "ce_weight": 0.1,
        "methods": [{"name": "kd", "weight": 0.9, "options": {"temperature": 4}}],
        "metrics": metrics,
        "schedule": {"name": "cosine"},
        "train": {"progress": False, "device": args.device},
    }


def timed_run(cfg: dict[str, Any]) -> float:
    start = time.perf_counter()
    run(cfg, track=False)
    return time.perf_counter() - start


def per_metric_seconds(args: argparse.Namespace) -> dict[str, float]:
    """One evaluation of each metric alone on its split (after one training epoch)."""
    cfg = config(args, [{"name": m, "split": SPLIT.get(m, "test")} for m in ANALYSIS_METRICS])
    cfg["epochs"] = 1
    trainer = Trainer(parse_config(cfg))
    for _, metric in trainer.metrics:
        metric.start(trainer._metric_context("train", 0))
    trainer._train_epoch(1)
    trainer.evaluate("test", [], 1)  # the teacher's test logits are cached as in a run
    seconds = {}
    for ref, metric in trainer.metrics:
        start = time.perf_counter()
        trainer.evaluate(ref.split, [metric], 1)
        seconds[f"{ref.name} ({ref.split})"] = time.perf_counter() - start
    start = time.perf_counter()
    trainer.evaluate("test", [], 1)
    seconds["(test accuracy only)"] = time.perf_counter() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion", choices=["fashion", "digits"])
    parser.add_argument("--root", default="data", help="fashion_mnist root folder")
    parser.add_argument("--train-size", type=int, default=12000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (without, with metrics)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--variants",
        default="none,all,all_but_embedding,light",
        help="comma-separated: none, all, all_but_embedding, light (all but embedding, cka, interpolation)",
    )
    parser.add_argument("--no-breakdown", action="store_true", help="skip timing each metric's evaluation alone")
    args = parser.parse_args()
    plugins.register_module(_Register(), name="metric-overhead-benchmark")

    def scheduled(names: list[str]) -> list[dict[str, Any]]:
        # interpolation measures the training set: on any other split it only repeats test accuracy
        return [{"name": m, "split": SPLIT.get(m, "test"), "every": args.every} for m in names]

    heavy = {"embedding", "cka", "interpolation"}  # t-SNE; float64 Gram matrices; a pass over the train split
    choices = {
        "none": [],
        "all": ANALYSIS_METRICS,
        "all_but_embedding": [m for m in ANALYSIS_METRICS if m != "embedding"],
        "light": [m for m in ANALYSIS_METRICS if m not in heavy],
    }
    names = ["none", *(v for v in args.variants.split(",") if v != "none")]
    unknown = [v for v in names if v not in choices]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(choices)}")
    variants = {name: config(args, scheduled(choices[name])) for name in names}
    timed_run({**variants["none"], "epochs": 1})  # warm-up: imports, data loading, allocator
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # alternate, so a change of machine load hits every variant alike
        for name, cfg in variants.items():
            seconds[name].append(timed_run(cfg))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "device": str(pick_device(args.device)),
        "threads": torch.get_num_threads(),
        "data": args.data
        if args.data == "digits"
        else f"fashion_mnist subset {args.train_size} train / {args.test_size} test",
        "epochs": args.epochs,
        "every": args.every,
        "metrics": ANALYSIS_METRICS,
        "seconds": seconds,
        "median_seconds": median,
        "ratios_to_none": {name: median[name] / median["none"] for name in variants if name != "none"},
        "variant_metrics": {name: choices[name] for name in variants},
        "one_evaluation_seconds": None if args.no_breakdown else per_metric_seconds(args),
        "kdhub_version": kdhub.__version__,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
