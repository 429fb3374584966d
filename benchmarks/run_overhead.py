"""A run's fixed cost: ``kdhub run`` of a short digits run end to end vs a bare script, itemised.

Each side runs as a fresh process, as a user starts it (``kdhub run config.yaml``, ``python
train.py``); the sides alternate ``--repeats`` times and the medians are compared. The kdhub side
runs the CLI in-process after installing timers around the engine's and the tracker's steps, so
its wall and CPU time (user + system, all threads) are itemised: interpreter start, imports, store
open, building the run (data, models, optimizer), run start (run, tags, params, config), dataset
inputs and description, training (the epoch loop), per-epoch logging, checkpoints, model logging,
run end, and interpreter exit. Time nested in another item counts once, in the innermost item.

The bare script trains the same network (kdhub_zoo's ``cnn``, written out in torch) on the same
1,797 digits (the same train/test sizes; a random split, not kdhub's stratified one) with the same
optimizer, batch size and epochs, evaluates on the test split after each epoch and saves the
trained weights: what a peer's training script does.

Variants: ``model`` (kdhub, default SQLite store, the model logged), ``nomodel``
(``tracking.log_model=false``), ``notrack`` (the engine without MLflow: ``run(config, track=False)``
through the Python API), ``warm`` (the ``model`` run again, 3 times, in the process that already ran
it once, as a study worker goes from run to run: the median of those runs, their items averaged),
``bare``. ``--baseline ROOT`` adds the ``model`` and ``nomodel`` variants run from another kdhub
checkout (``ROOT`` and ``ROOT/plugins`` first on PYTHONPATH, same virtual environment), alternating
with this checkout's, for before/after figures measured back to back.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_overhead.py --repeats 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_overhead.py --repeats 3 --baseline /tmp/baseline
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the item each timed function is charged to (module, attribute path); a missing one is skipped
TIMED: list[tuple[str, str, str]] = [
    ("store open", "kdhub.tracking.tracker", "Tracker.__init__"),
    ("build: models, plugins", "kdhub.engine.loop", "Trainer.__init__"),
    ("build: data", "kdhub.engine.build", "_load_data"),
    ("build: optimizer", "kdhub.engine.loop", "Trainer._new_optimizer"),
    ("run start", "kdhub.tracking.tracker", "Tracker.start"),
    ("run start", "kdhub.tracking.tracker", "Tracker.beat"),
    ("run start", "kdhub.tracking.tracker", "Tracker.params"),
    ("run start", "kdhub.tracking.tracker", "Tracker.text"),
    # the engine binds these at import (kdhub.engine.runner); older checkouts called them through kdhub.tracking
    ("dataset inputs, description", "kdhub.engine.runner", "log_run_start"),
    ("dataset inputs, description", "kdhub.tracking", "log_run_start"),
    ("dataset inputs, description", "kdhub.tracking.tracker", "Tracker.datasets"),
    ("training", "kdhub.engine.loop", "Trainer.fit"),
    ("per-epoch logging", "kdhub.tracking.tracker", "Tracker.metrics"),
    ("per-epoch logging", "kdhub.tracking.tracker", "Tracker.tags"),
    ("per-epoch logging", "kdhub.tracking.tracker", "Tracker.table"),
    ("per-epoch logging", "kdhub.tracking.tracker", "Tracker.figure"),
    ("checkpoints", "kdhub.engine.checkpoint", "Checkpointer._write"),
    ("model logging", "kdhub.engine.runner", "log_run_end"),
    ("model logging", "kdhub.tracking", "log_run_end"),
    ("model logging", "kdhub.tracking.tracker", "Tracker.log_model"),
    ("run end", "kdhub.tracking.tracker", "Tracker.finish"),
]
WARM_RUNS = 3
"""Runs timed after the first in the ``warm`` variant's process."""
ITEMS = [
    "interpreter start",
    "imports",
    "store open",
    "build: models, plugins",
    "build: data",
    "build: optimizer",
    "run start",
    "dataset inputs, description",
    "training",
    "per-epoch logging",
    "checkpoints",
    "model logging",
    "run end",
    "cli, config, other",
    "interpreter exit",
]


# the child processes --------------------------------------------------------------------------------


class _Clock:
    """Charges wall and CPU time to the innermost timed item (a stack of labels)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.stack = ["cli, config, other"]
        self.mark = (time.perf_counter(), time.process_time())

    def _charge(self) -> None:
        now = (time.perf_counter(), time.process_time())
        label = self.stack[-1]
        self.wall[label] = self.wall.get(label, 0.0) + now[0] - self.mark[0]
        self.cpu[label] = self.cpu.get(label, 0.0) + now[1] - self.mark[1]
        self.mark = now

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._charge()
            self.stack.append(label)
            try:
                return fn(*args, **kwargs)
            finally:
                self._charge()
                self.stack.pop()

        return timed

    def install(self) -> None:
        import importlib

        for label, module, path in TIMED:
            try:
                owner: Any = importlib.import_module(module)
            except ImportError:
                continue
            *parents, name = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent, None)
            if owner is not None and hasattr(owner, name):
                setattr(owner, name, self.wrap(label, getattr(owner, name)))


def _child_kdhub(variant: str, config: Path, uri: str, out: Path, launched: float) -> None:
    started = (time.time(), time.process_time())
    wall0 = time.perf_counter()
    import kdhub.cli
    import kdhub.engine.runner
    import kdhub.tracking

    imports = (time.perf_counter() - wall0, time.process_time() - started[1])
    clock = _Clock()
    clock.install()

    def once() -> None:
        if variant == "notrack":
            from kdhub.contract.config_loading import load_config

            kdhub.engine.runner.run(load_config(config), track=False)
            return
        argv = ["run", str(config), "--tracking-uri", uri]
        if variant == "nomodel":
            argv += ["--set", "tracking.log_model=false"]
        code = kdhub.cli.main(argv)
        if code != 0:
            raise SystemExit(f"kdhub run failed with exit code {code}")

    once()
    clock._charge()
    result: dict[str, Any] = {}
    if variant == "warm":  # the runs after the first in the same process (a study worker's)
        clock.wall.clear()
        clock.cpu.clear()
        walls, cpus = [], []
        for _ in range(WARM_RUNS):
            mark = (time.perf_counter(), time.process_time())
            once()
            walls.append(time.perf_counter() - mark[0])
            cpus.append(time.process_time() - mark[1])
        clock._charge()
        result["per_run"] = {"wall": statistics.median(walls), "cpu": statistics.median(cpus)}
        wall = {k: v / WARM_RUNS for k, v in clock.wall.items()}
        cpu = {k: v / WARM_RUNS for k, v in clock.cpu.items()}
    else:
        wall, cpu = dict(clock.wall), dict(clock.cpu)
        wall["interpreter start"], cpu["interpreter start"] = started[0] - launched, started[1]
        wall["imports"], cpu["imports"] = imports
    result.update(wall=wall, cpu=cpu, end=time.time(), end_cpu=time.process_time())
    out.write_text(json.dumps(result))


def _child_bare(epochs: int, out: Path, launched: float) -> None:
    """The bare script: digits, the same CNN, SGD, test accuracy each epoch, the weights saved."""
    started = (time.time(), time.process_time())
    import gzip
    import importlib.util

    import numpy as np
    import torch
    from torch import nn

    origin = importlib.util.find_spec("sklearn")
    assert origin is not None
    assert origin.submodule_search_locations is not None
    csv = Path(next(iter(origin.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(csv, "rt") as handle:
        raw = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    images = torch.from_numpy((raw[:, :-1] * (255.0 / 16.0)).round()).to(torch.uint8).reshape(-1, 1, 8, 8)
    labels = torch.from_numpy(raw[:, -1]).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    test_n = 450  # kdhub's digits: 25 % of 1,797 for test
    test_idx, train_idx = order[:test_n], order[test_n:]
    x_train = images[train_idx].float() / 255
    mean, std = x_train.mean(), x_train.std()
    x_train = (x_train - mean) / std
    x_test = (images[test_idx].float() / 255 - mean) / std
    y_train, y_test = labels[train_idx], labels[test_idx]

    def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        stage(16, 16, 1),
        stage(16, 32, 2),
        stage(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(y_train))
        for i in range(0, len(perm), 64):
            index = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x_train[index]), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item() * 100
        print(f"test accuracy {acc:.2f}%")
    with tempfile.TemporaryDirectory() as folder:
        torch.save(model.state_dict(), Path(folder) / "model.pt")
    wall = {"interpreter start": started[0] - launched}
    cpu = {"interpreter start": started[1]}
    out.write_text(json.dumps({"wall": wall, "cpu": cpu, "end": time.time(), "end_cpu": time.process_time()}))


# the parent ----------------------------------------------------------------------------------------


def _measure(variant: str, root: Path | None, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One fresh process of a variant: its wall, its CPU (user + system) and its items."""
    out = folder / "result.json"
    out.unlink(missing_ok=True)
    env = dict(os.environ)
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "plugins"), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    launched = time.time()
    command = [sys.executable, __file__, "--child", variant, "--out", str(out), "--launched", repr(launched)]
    command += ["--epochs", str(args.epochs), "--config", str(folder / "run.yaml"), "--uri", args.uri]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = json.loads(out.read_text())
    items_wall, items_cpu = result["wall"], result["cpu"]
    if "per_run" in result:  # a run after the first in its process: no start, imports or exit
        return {
            "wall": result["per_run"]["wall"],
            "cpu": result["per_run"]["cpu"],
            "items_wall": items_wall,
            "items_cpu": items_cpu,
        }
    items_wall["interpreter exit"] = max(0.0, wall - (result["end"] - launched))
    items_cpu["interpreter exit"] = max(0.0, cpu - result["end_cpu"])
    return {"wall": wall, "cpu": cpu, "items_wall": items_wall, "items_cpu": items_cpu}


def _config(folder: Path, epochs: int) -> None:
    (folder / "run.yaml").write_text(
        "seed: 0\n"
        f"epochs: {epochs}\n"
        "student: {name: cnn}\n"
        "data: {name: digits, batch_size: 64}\n"
        "train: {progress: false}\n"
        "tracking: {experiment: overhead}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats of each variant")
    parser.add_argument("--variants", default="model,nomodel,notrack,warm,bare", help="comma-separated variants")
    parser.add_argument(
        "--baseline", type=Path, help="another kdhub checkout: its model and nomodel runs follow this checkout's"
    )
    parser.add_argument("--uri", default="sqlite:///mlflow.db", help="tracking store (created before timing)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "bare":
            _child_bare(args.epochs, args.out, args.launched)
        else:
            _child_kdhub(args.child, args.config, args.uri, args.out, args.launched)
        return

    variants: list[tuple[str, Path | None]] = []
    for name in (v for v in args.variants.split(",") if v):
        variants.append((name, None))
        if args.baseline is not None and name in ("model", "nomodel"):  # before/after side by side
            variants.append((f"{name}@baseline", args.baseline.resolve()))
    folder = Path(tempfile.mkdtemp(prefix="kdhub-overhead-"))
    _config(folder, args.epochs)
    print(f"warming up in {folder} (creates the store, fills the page cache)...", file=sys.stderr)
    _measure("model", None, args, folder)
    loads = [os.getloadavg()[0]]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v, _ in variants}
    for repeat in range(args.repeats):
        for variant, root in variants:
            runs[variant].append(_measure(variant.split("@")[0], root, args, folder))
            done = runs[variant][-1]
            print(
                f"  {repeat + 1}/{args.repeats} {variant}: {done['wall']:.2f} s wall, {done['cpu']:.2f} s CPU, "
                f"load {os.getloadavg()[0]:.1f}; items {json.dumps(done['items_cpu'], sort_keys=True)}",
                file=sys.stderr,
            )
        loads.append(os.getloadavg()[0])

    def med(variant: str, key: str, item: str | None = None) -> float:
        if item is None:
            return statistics.median(r[key] for r in runs[variant])
        return statistics.median(r[key].get(item, 0.0) for r in runs[variant])

    import torch

    print(
        f"{args.epochs}-epoch digits run (cnn width 16, batch 64), {args.repeats} fresh processes per variant, "
        f"medians; torch threads {torch.get_num_threads()}, {os.cpu_count()} cores"
    )
    print(f"1-minute load average during the runs: {', '.join(f'{v:.1f}' for v in loads)}")
    print()
    names = [v for v, _ in variants]
    print("| variant | " + " | ".join(names) + " |")
    print("| --- | " + " | ".join("---" for _ in names) + " |")
    print("| wall s | " + " | ".join(f"{med(v, 'wall'):.2f}" for v in names) + " |")
    print("| CPU s (user + sys) | " + " | ".join(f"{med(v, 'cpu'):.2f}" for v in names) + " |")
    if "bare" in runs:
        print("| wall / bare | " + " | ".join(f"{med(v, 'wall') / med('bare', 'wall'):.2f}" for v in names) + " |")
        print("| CPU / bare | " + " | ".join(f"{med(v, 'cpu') / med('bare', 'cpu'):.2f}" for v in names) + " |")
        print("| wall − bare, s | " + " | ".join(f"{med(v, 'wall') - med('bare', 'wall'):.2f}" for v in names) + " |")
    print()
    itemised = [v for v in names if v != "bare"]
    print("Itemised, wall s / CPU s (medians per item):")
    print()
    print("| item | " + " | ".join(itemised) + " |")
    print("| --- | " + " | ".join("---" for _ in itemised) + " |")
    for item in ITEMS:
        cells = [f"{med(v, 'items_wall', item):.2f} / {med(v, 'items_cpu', item):.2f}" for v in itemised]
        print(f"| {item} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
