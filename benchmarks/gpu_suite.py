"""kdhub on one GPU, in one command: throughput, the 240-epoch recipe, every plugin in bf16, memory.

    python benchmarks/gpu_suite.py                     # CUDA; about 8 minutes on one H100-class GPU
    python benchmarks/gpu_suite.py --out results/h100  # results to another folder
    python benchmarks/gpu_suite.py --quick             # every code path on CPU in under a minute (CI)

Writes ``gpu_suite.json`` and ``gpu_suite.md`` to ``--out`` (default ``benchmarks/results/``):

(a) images/s of kdhub and of the hand-written KD loop (``benchmarks/_common.py``) for
    resnet32x4 -> resnet8x4 on CIFAR-100-shaped synthetic data at batch 64 and 256, in fp32,
    bf16, bf16 + channels_last and bf16 + torch.compile: both in one process, alternating in short
    blocks (one epoch each), ratio = median kdhub / median hand-written;
(b) the projected wall time of the 240-epoch CIFAR-100 recipe (50,000 images, batch 64, a test
    evaluation per epoch) from kdhub's best setting, and the same for a RepDistiller-style
    pipeline (PIL images through torchvision transforms in a DataLoader with workers, fp32, a
    ``loss.item()`` per step) measured on the same GPU for a few hundred steps;
(c) every registered method and policy for 20 steps in bf16 through the engine (the random
    teacher's BatchNorm statistics first taken from 10 batches, as a trained teacher's are): a
    crash or a non-finite loss fails the suite (exit 1, the plugin named); CUDA's sync debug mode
    counts the host synchronisations of the steps;
(d) TLLM (5 % validation split) with the six light analysis metrics against plain KD, whole runs;
(e) peak GPU memory (``torch.cuda.max_memory_allocated``, reset per case) everywhere;
(f) the streaming data path on a folder of 224x224 JPEGs, when a dataset named ``image_folder``
    is registered (skipped with a note otherwise).

Every section's step counts come from its share of the time budget (:data:`FULL`) and a
calibration; a section that would overrun the total is skipped with a note. On a machine without
CUDA the suite refuses to run (exit 2) unless ``--quick``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import HandLoop, kd_config, kdhub_epoch, sync

import kdhub
from kdhub.contract.config_loading import parse_config
from kdhub.engine.hostsync import CudaSyncGuard
from kdhub.engine.loop import Trainer
from kdhub.engine.speed import available_cores, resolve_threads

RESULTS = Path(__file__).resolve().parent / "results"
RECIPE = {"epochs": 240, "train_images": 50_000, "test_images": 10_000, "batch": 64}
LIGHT_METRICS = ["per_class_accuracy", "agreement", "fidelity", "calibration", "confidence", "eigenspace"]
SETTINGS: dict[str, dict[str, Any]] = {
    "fp32": {"amp": "none"},
    "bf16": {"amp": "bf16"},
    "bf16+channels_last": {"amp": "bf16", "channels_last": True},
    "bf16+compile": {"amp": "bf16", "compile": True},
}


@dataclass(frozen=True)
class Budget:
    """Seconds per section and the sizes the suite runs at; steps are derived from these."""

    total_s: float  # hard stop: sections that would overrun are skipped with a note
    throughput_s: float  # (a) all cases, warm-ups excluded
    compile_s: float  # (a) torch.compile warm-ups (once per batch size, kdhub + hand loop)
    pipeline_s: float  # (b) evaluation time + the RepDistiller-style loader
    plugins_s: float  # (c) every method and policy
    overhead_s: float  # (d) TLLM + light metrics vs plain KD
    streaming_s: float  # (f)
    device: str
    student: dict[str, Any]
    teacher: dict[str, Any]
    fsp_teacher: dict[str, Any]  # FSP needs the student's channel counts
    num_classes: int
    image_size: int
    batches: tuple[int, ...]
    repeats: int  # kdhub / hand-written pairs per case
    max_block_steps: int
    plugin_steps: int
    plugin_subset: tuple[str, ...] | None  # "method kd", "policy tllm", ...; None = every registered plugin
    pipeline_steps: int  # RepDistiller-style steps measured (bounded by the time share too)
    pipeline_workers: int
    overhead_epochs: int
    overhead_repeats: int
    jpeg_size: int
    jpeg_count: int
    compile_backend: str


FULL = Budget(  # 430 s of sections + 50 s for imports, data and model builds
    total_s=480,
    throughput_s=130,
    compile_s=80,
    pipeline_s=50,
    plugins_s=90,
    overhead_s=50,
    streaming_s=30,
    device="cuda",
    student={"name": "resnet8x4"},
    teacher={"name": "resnet32x4"},
    fsp_teacher={"name": "resnet32x4"},
    num_classes=100,
    image_size=32,
    batches=(64, 256),
    repeats=3,
    max_block_steps=400,
    plugin_steps=20,
    plugin_subset=None,
    pipeline_steps=300,
    pipeline_workers=8,  # RepDistiller's and mdistiller's default
    overhead_epochs=4,
    overhead_repeats=2,
    jpeg_size=224,
    jpeg_count=2048,
    compile_backend="inductor",
)
QUICK = Budget(
    total_s=45,
    throughput_s=8,
    compile_s=10,
    pipeline_s=6,
    plugins_s=8,
    overhead_s=6,
    streaming_s=4,
    device="cpu",
    student={"name": "cnn", "options": {"width": 4, "depth": 2}},
    teacher={"name": "cnn", "options": {"width": 8, "depth": 2}},
    fsp_teacher={"name": "cnn", "options": {"width": 4, "depth": 2}},
    num_classes=10,
    image_size=8,
    batches=(16, 32),
    repeats=2,
    max_block_steps=8,
    plugin_steps=4,
    # one of each code path (the default test suite trains every method and policy on CPU)
    plugin_subset=("method kd", "method fitnet", "method crd", "method rkd", "method ab", "policy tllm"),
    pipeline_steps=8,
    pipeline_workers=1,
    overhead_epochs=2,
    overhead_repeats=1,
    jpeg_size=32,
    jpeg_count=32,
    compile_backend="aot_eager",  # graph capture without C++ code generation: seconds, not minutes
)


class Suite:
    """Runs the sections, keeps the clock and the results, prints progress."""

    def __init__(self, budget: Budget, quick: bool, enforce_budget: bool | None = None) -> None:
        self.b = budget
        self.quick = quick
        # --quick runs every case whatever the machine's load (CI checks the code paths, not the clock)
        self.enforce_budget = not quick if enforce_budget is None else enforce_budget
        self.device = torch.device(budget.device)
        self.start = time.perf_counter()
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.results: dict[str, Any] = {}

    # clock and output ---------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.b.total_s - self.elapsed() if self.enforce_budget else math.inf

    def say(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", flush=True)

    def skip(self, what: str, reason: str) -> dict[str, Any]:
        note = f"{what}: skipped ({reason})"
        self.notes.append(note)
        self.say(note)
        return {"skipped": reason}

    # memory --------------------------------------------------------------------------------------
    def reset_peak(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)

    def config(self, batch: int, steps: int, setting: str, **overrides: Any) -> dict[str, Any]:
        cfg = kd_config(
            self.b.student,
            self.b.teacher,
            batch,
            steps,
            self.b.device,
            num_classes=self.b.num_classes,
            image_size=self.b.image_size,
            **SETTINGS[setting],
        )
        cfg["train"]["compile_backend"] = self.b.compile_backend
        for key, value in overrides.items():
            cfg[key] = value
        return cfg

    # (a) -----------------------------------------------------------------------------------------
    def calibrate(self, batch: int) -> float:
        """Seconds per fp32 step of the hand-written loop (the slowest setting bounds every block)."""
        trainer = Trainer(parse_config(self.config(batch, 4, "fp32")))
        hand = HandLoop(trainer)
        hand.epoch()
        images_per_s = hand.epoch()
        trainer.close()
        return batch / images_per_s

    def throughput(self) -> dict[str, Any]:
        b = self.b
        cases = len(b.batches) * len(SETTINGS)
        block_s = b.throughput_s / (cases * (2 * b.repeats + 2))  # + a warm-up block per side
        out: dict[str, Any] = {"block_target_s": round(block_s, 3), "cases": []}
        for batch in b.batches:
            step_s = self.calibrate(batch)
            steps = max(2, min(b.max_block_steps, round(block_s / step_s)))
            self.say(f"(a) batch {batch}: fp32 step {step_s * 1e3:.1f} ms -> {steps} steps per block")
            for setting in SETTINGS:
                need = block_s * (2 * b.repeats + 2) + (b.compile_s / len(b.batches) if "compile" in setting else 0)
                if self.left() < need + self.reserve("throughput"):
                    out["cases"].append({"batch": batch, "setting": setting, **self.skip(f"(a) {setting}", "budget")})
                    continue
                out["cases"].append(self.throughput_case(batch, steps, setting))
        return out

    def throughput_case(self, batch: int, steps: int, setting: str) -> dict[str, Any]:
        self.reset_peak()
        trainer = Trainer(parse_config(self.config(batch, steps, setting)))
        hand = HandLoop(trainer)
        begin = time.perf_counter()
        kdhub_epoch(trainer, 1)  # warm-up (and compilation) of both sides
        hand.epoch()
        warmup_s = time.perf_counter() - begin
        ours: list[float] = []
        theirs: list[float] = []
        peak = {"kdhub": 0.0, "hand_written": 0.0}
        for r in range(self.b.repeats):  # alternate which side goes first
            order = ("kdhub", "hand_written") if r % 2 == 0 else ("hand_written", "kdhub")
            for side in order:
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                if side == "kdhub":
                    ours.append(kdhub_epoch(trainer, r + 2))
                else:
                    theirs.append(hand.epoch())
                peak[side] = max(peak[side], self.peak_mb() or 0.0)
        compiled = None
        if "compile" in setting:
            compiled = {
                "student": bool(getattr(trainer.train_model, "compiled", False)),
                "teacher": bool(getattr(trainer.teacher_forward.model, "compiled", False)),
            }
        case = {
            "batch": batch,
            "setting": setting,
            "steps_per_block": steps,
            "kdhub_images_per_s": round(statistics.median(ours), 1),
            "hand_written_images_per_s": round(statistics.median(theirs), 1),
            "ratio": round(statistics.median(ours) / statistics.median(theirs), 4),
            "pair_ratios": [round(a / b, 4) for a, b in zip(ours, theirs, strict=True)],
            "warmup_s": round(warmup_s, 2),
            "peak_mb": peak if self.device.type == "cuda" else None,
            "compiled": compiled,
        }
        self.say(
            f"(a) batch {batch} {setting}: kdhub {case['kdhub_images_per_s']:.0f} img/s, hand-written "
            f"{case['hand_written_images_per_s']:.0f} img/s, ratio {case['ratio']:.3f} (warm-up {warmup_s:.1f}s)"
        )
        if compiled is not None and not all(compiled.values()):
            self.notes.append(f"(a) batch {batch} {setting}: torch.compile fell back to eager ({compiled})")
        trainer.close()
        return case

    def reserve(self, section: str) -> float:
        """Time the sections after ``section`` are owed (so one section cannot starve the others)."""
        order = ["throughput", "pipeline", "plugins", "overhead", "streaming"]
        shares = {
            "throughput": self.b.throughput_s + self.b.compile_s,
            "pipeline": self.b.pipeline_s,
            "plugins": self.b.plugins_s,
            "overhead": self.b.overhead_s,
            "streaming": self.b.streaming_s,
        }
        return sum(shares[s] for s in order[order.index(section) + 1 :]) * 0.5

    def best_recipe_setting(self, compiled: bool = True) -> tuple[str, float] | None:
        """kdhub's fastest setting at the recipe's batch (the smallest batch in --quick) and its images/s."""
        batch = RECIPE["batch"] if RECIPE["batch"] in self.b.batches else self.b.batches[0]
        cases = [
            c
            for c in self.results.get("throughput", {}).get("cases", [])
            if c["batch"] == batch and "ratio" in c and (compiled or "compile" not in c["setting"])
        ]
        if not cases:
            return None
        best = max(cases, key=lambda c: c["kdhub_images_per_s"])
        return best["setting"], best["kdhub_images_per_s"]

    # (b) -----------------------------------------------------------------------------------------
    def pipeline(self) -> dict[str, Any]:
        out: dict[str, Any] = {"recipe": dict(RECIPE)}
        best = self.best_recipe_setting()
        if best is None:
            return self.skip("(b)", "no throughput measurement at the recipe's batch")
        setting, images_per_s = best
        batch = RECIPE["batch"] if RECIPE["batch"] in self.b.batches else self.b.batches[0]
        test_images = RECIPE["test_images"] if not self.quick else 256
        self.reset_peak()
        cfg = self.config(batch, 4, setting)
        cfg["data"]["options"]["test_size"] = test_images
        trainer = Trainer(parse_config(cfg))
        trainer.evaluate("test", [], 1)  # fills the teacher's test-logit cache, as epoch 1 does
        sync(self.device)
        begin = time.perf_counter()
        trainer.evaluate("test", [], 2)
        sync(self.device)
        eval_s = (time.perf_counter() - begin) * RECIPE["test_images"] / test_images
        trainer.close()
        train_epoch_s = RECIPE["train_images"] / images_per_s
        warmup = next(
            (
                c["warmup_s"]
                for c in self.results["throughput"]["cases"]
                if c.get("setting") == setting and c.get("batch") == batch
            ),
            0.0,
        )
        kdhub_total = RECIPE["epochs"] * (train_epoch_s + eval_s) + warmup
        out["kdhub"] = {
            "setting": setting,
            "batch": batch,
            "images_per_s": images_per_s,
            "train_epoch_s": round(train_epoch_s, 2),
            "test_eval_s": round(eval_s, 3),
            "one_off_s": round(warmup, 1),
            "projected_minutes": round(kdhub_total / 60, 2),
            "peak_mb": self.peak_mb(),
        }
        self.say(f"(b) kdhub {setting}: {out['kdhub']['projected_minutes']:.1f} min for the 240-epoch recipe")
        out["repdistiller_style"] = self.repdistiller_style(batch)
        rd = out["repdistiller_style"]
        out["speedup"] = round(rd["projected_minutes"] / out["kdhub"]["projected_minutes"], 2)
        self.say(f"(b) RepDistiller-style: {rd['projected_minutes']:.1f} min; kdhub is {out['speedup']}x faster")
        return out

    def repdistiller_style(self, batch: int) -> dict[str, Any]:
        """RepDistiller's CIFAR-100 pipeline and ``train_distill`` loop with KD, timed for a few hundred steps."""
        from PIL import Image
        from torchvision import transforms

        b = self.b
        size, pad = b.image_size, max(1, b.image_size // 8)
        mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
        train_tf = transforms.Compose(
            [
                transforms.RandomCrop(size, padding=pad),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )
        test_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])

        class CifarInstance(torch.utils.data.Dataset):
            """torchvision's CIFAR100 storage (uint8 HWC numpy, list of labels) + RepDistiller's index."""

            def __init__(self, n: int, transform: Any, seed: int) -> None:
                rng = np.random.default_rng(seed)
                self.data = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
                self.targets = [int(t) for t in rng.integers(0, b.num_classes, n)]
                self.transform = transform

            def __len__(self) -> int:
                return len(self.targets)

            def __getitem__(self, index: int) -> tuple[Any, int, int]:
                img = self.transform(Image.fromarray(self.data[index]))
                return img, self.targets[index], index

        n_train = batch * (b.pipeline_steps + 20)
        n_test = 10 * 32 if self.quick else 100 * 32
        workers = min(b.pipeline_workers, available_cores())
        train_loader = torch.utils.data.DataLoader(
            CifarInstance(n_train, train_tf, 0), batch_size=batch, shuffle=True, num_workers=workers
        )
        test_loader = torch.utils.data.DataLoader(
            CifarInstance(n_test, test_tf, 1), batch_size=batch // 2, shuffle=False, num_workers=max(1, workers // 2)
        )
        self.reset_peak()
        torch.manual_seed(0)
        student = _build(b.student, b.num_classes, size).to(self.device)
        teacher = _build(b.teacher, b.num_classes, size).to(self.device).eval()
        optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        student.train()
        losses = _Meter()
        top1 = _Meter()

        def step(data: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
            images, target, index = data
            images = images.float().to(self.device)
            target, index = target.to(self.device), index.to(self.device)
            logit_s = student(images)
            with torch.no_grad():
                logit_t = teacher(images)
            loss_cls = F.cross_entropy(logit_s, target)
            p_s = F.log_softmax(logit_s / 4, dim=1)
            p_t = F.softmax(logit_t / 4, dim=1)
            loss_div = F.kl_div(p_s, p_t, reduction="sum") * 16 / logit_s.shape[0]  # RepDistiller's DistillKL
            loss = 0.1 * loss_cls + 0.9 * loss_div
            acc1 = (logit_s.argmax(1) == target).float().mean() * 100
            losses.update(loss.item(), images.size(0))  # as train_distill: one host sync per step
            top1.update(acc1, images.size(0))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        begin = time.perf_counter()
        iterator = iter(train_loader)  # a new iterator every epoch: workers start again
        first = next(iterator)
        startup_s = time.perf_counter() - begin
        step(first)
        for _ in range(min(10, b.pipeline_steps // 4)):  # warm-up
            step(next(iterator))
        sync(self.device)
        time_share = b.pipeline_s * 0.6
        begin = time.perf_counter()
        done = 0
        for data in iterator:
            step(data)
            done += 1
            if done >= b.pipeline_steps or time.perf_counter() - begin > time_share:
                break
        sync(self.device)
        step_s = (time.perf_counter() - begin) / done
        peak = self.peak_mb()
        student.eval()
        begin = time.perf_counter()
        with torch.no_grad():  # RepDistiller's validate(): student only, a loss.item() per batch
            for images, target, _ in test_loader:
                out = student(images.float().to(self.device))
                losses.update(F.cross_entropy(out, target.to(self.device)).item(), images.size(0))
        sync(self.device)
        eval_s = (time.perf_counter() - begin) * RECIPE["test_images"] / n_test
        del train_loader, test_loader, iterator
        steps_per_epoch = math.ceil(RECIPE["train_images"] / RECIPE["batch"])
        epoch_s = steps_per_epoch * step_s * RECIPE["batch"] / batch + startup_s
        total = RECIPE["epochs"] * (epoch_s + eval_s)
        return {
            "workers": workers,
            "steps_measured": done,
            "step_ms": round(step_s * 1e3, 3),
            "images_per_s": round(batch / step_s, 1),
            "worker_startup_s": round(startup_s, 3),
            "train_epoch_s": round(epoch_s, 2),
            "test_eval_s": round(eval_s, 3),
            "projected_minutes": round(total / 60, 2),
            "peak_mb": peak,
        }

    # (c) -----------------------------------------------------------------------------------------
    def plugin_config(self, method: str, policy: str, policy_options: dict[str, Any], epochs: int) -> dict[str, Any]:
        b = self.b
        batch = b.batches[0]
        steps = max(1, b.plugin_steps // epochs)
        validation = policy in ("tllm", "annealing")  # a validation split with a sample of every class
        options = {"init_epochs": 1} if method in ("ab", "ft", "fsp") else {}
        if method == "crd":
            options["num_negatives"] = 4096 if not self.quick else 16
        return {
            "seed": 0,
            "epochs": epochs,
            "data": {
                "name": "synthetic",
                "options": {
                    "num_classes": b.num_classes,
                    "image_size": b.image_size,
                    "train_size": max(round(batch * steps / 0.8), 5 * b.num_classes) if validation else batch * steps,
                    "test_size": 2 * batch,
                    "crop_padding": max(1, b.image_size // 8),
                    "horizontal_flip": True,
                },
                "batch_size": batch,
                "drop_last": True,
                "val_fraction": 0.2 if validation else 0.0,
            },
            "student": b.student,
            "teacher": b.fsp_teacher if method == "fsp" else b.teacher,
            "methods": [{"name": method, "options": options}],
            "policy": {"name": policy, "options": policy_options},
            "metrics": ["accuracy"],
            "train": {"device": b.device, "amp": "bf16", "progress": False},
        }

    def plugins(self) -> dict[str, Any]:
        methods = kdhub.list_plugins("method")
        policies = kdhub.list_plugins("policy")
        policy_setup: dict[str, tuple[dict[str, Any], str]] = {  # options that make each policy act within the run
            "eskd": ({"stop_at": 3}, "kd"),
            "annealing": ({"phase1_epochs": 2}, "mse_logits"),
            "loss_switch": ({"at": 2, "window": 1.0}, "kd"),
            "tllm": ({"start": 1, "window": 1, "eta": 100.0, "max_stopped_fraction": 0.5}, "kd"),
        }
        runs = [(f"method {m}", m, "constant", {}, 1) for m in methods]
        for p in policies:
            options, method = policy_setup.get(p, ({}, "kd"))
            runs.append((f"policy {p}", method, p, options, 4))
        if self.b.plugin_subset is not None:
            runs = [r for r in runs if r[0] in self.b.plugin_subset]
        out: list[dict[str, Any]] = []
        share = self.b.plugins_s / max(1, len(runs))
        for label, method, policy, options, epochs in runs:
            if self.left() < share + self.reserve("plugins"):
                out.append({"plugin": label, **self.skip(f"(c) {label}", "budget")})
                continue
            out.append(self.plugin_run(label, self.plugin_config(method, policy, options, epochs)))
        return {"runs": out, "steps": self.b.plugin_steps}

    def plugin_run(self, label: str, cfg: dict[str, Any]) -> dict[str, Any]:
        self.reset_peak()
        begin = time.perf_counter()
        record: dict[str, Any] = {"plugin": label}
        trainer = None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                trainer = Trainer(parse_config(cfg))
                calibrate_teacher(trainer, batches=2 if self.quick else 10)
                guard = CudaSyncGuard("warn") if self.device.type == "cuda" else contextlib.nullcontext()
                with guard:
                    trainer.fit()
            syncs = sum("synchroniz" in str(w.message) for w in caught)
            last = trainer.history[-1]
            logged = trainer.log.metric_history  # the init stage's losses too
            losses = {k: v for k, series in logged.items() if k.startswith(("loss/", "init/")) for _, v in series}
            bad = {
                f"{k}@{step}": v
                for k, series in logged.items()
                if k.startswith(("loss/", "init/"))
                for step, v in series
                if not math.isfinite(v)
            }
            steps = getattr(guard, "steps", None)
            record.update(
                seconds=round(time.perf_counter() - begin, 2),
                steps=steps,
                host_syncs=syncs if self.device.type == "cuda" else None,
                losses={k: round(v, 5) for k, v in losses.items()},
                test_acc=last.get("test/acc"),
                peak_mb=self.peak_mb(),
            )
            if bad:
                record["error"] = f"non-finite loss {bad}"
        except Exception as err:
            record.update(seconds=round(time.perf_counter() - begin, 2), error=f"{type(err).__name__}: {err}")
            record["traceback"] = traceback.format_exc(limit=6)
        finally:
            if trainer is not None:
                trainer.close()
        if "error" in record:
            self.failures.append(f"(c) {label}: {record['error'].splitlines()[0]}")
        syncs = record.get("host_syncs")
        self.say(
            f"(c) {label}: {'FAILED ' + record['error'].splitlines()[0] if 'error' in record else 'ok'}"
            + (f", {syncs} host syncs" if syncs else "")
            + (f", peak {record['peak_mb']} MB" if record.get("peak_mb") else "")
        )
        return record

    # (d) -----------------------------------------------------------------------------------------
    def overhead(self) -> dict[str, Any]:
        b = self.b
        best = self.best_recipe_setting(compiled=False)  # whole runs build new models: no compile warm-ups here
        setting, images_per_s = best if best is not None else ("fp32", 1000.0)
        batch = RECIPE["batch"] if RECIPE["batch"] in b.batches else b.batches[0]
        runs = 2 * b.overhead_repeats  # two variants
        epoch_s = b.overhead_s / (runs * (1.5 * b.overhead_epochs + 1))  # + evaluation and the build
        train_size = int(min(RECIPE["train_images"], max(8 * batch, images_per_s * epoch_s)))
        test_size = max(batch, train_size // 5)  # CIFAR's 5:1
        base = self.config(batch, 1, setting)
        base["epochs"] = b.overhead_epochs
        base["data"]["options"].update(train_size=train_size, test_size=test_size)
        base["data"]["drop_last"] = False
        every = max(1, b.overhead_epochs // 2)
        variants = {
            "kd": {**base, "metrics": ["accuracy"]},
            "kd+tllm+light_metrics": {
                **base,
                "data": {**base["data"], "val_fraction": 0.05},
                "policy": {"name": "tllm"},
                "metrics": ["accuracy", *({"name": m, "every": every} for m in LIGHT_METRICS)],
            },
        }
        seconds: dict[str, list[float]] = {k: [] for k in variants}
        peak: dict[str, float | None] = dict.fromkeys(variants)
        for _ in range(b.overhead_repeats):
            for name, cfg in variants.items():
                self.reset_peak()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    trainer = Trainer(parse_config(cfg))
                    sync(self.device)
                    begin = time.perf_counter()
                    trainer.fit()
                    sync(self.device)
                seconds[name].append(time.perf_counter() - begin)
                peak[name] = self.peak_mb()
                trainer.close()
                del trainer
        median = {k: statistics.median(v) for k, v in seconds.items()}
        ratio = median["kd+tllm+light_metrics"] / median["kd"]
        self.say(f"(d) TLLM + light metrics / plain KD: {ratio:.3f} ({train_size} training images, {setting})")
        return {
            "setting": setting,
            "epochs": b.overhead_epochs,
            "metrics_every": every,
            "train_images": train_size,
            "test_images": test_size,
            "seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
            "ratio": round(ratio, 4),
            "peak_mb": peak,
        }

    # (f) -----------------------------------------------------------------------------------------
    def streaming(self) -> dict[str, Any]:
        if "image_folder" not in kdhub.list_plugins("dataset"):
            return self.skip("(f) streaming", "no dataset named image_folder is registered: no streaming data path yet")
        b = self.b
        root = Path(tempfile.mkdtemp(prefix="kdhub-jpegs-"))
        try:
            begin = time.perf_counter()
            write_jpeg_folder(root, b.jpeg_count, b.jpeg_size, classes=10)
            written_s = time.perf_counter() - begin
            self.say(f"(f) wrote {b.jpeg_count} {b.jpeg_size}x{b.jpeg_size} JPEGs in {written_s:.1f}s")
            return self.streaming_case(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def streaming_case(self, root: Path) -> dict[str, Any]:
        b = self.b
        plugin = kdhub.get_plugin("dataset", "image_folder")
        options: dict[str, Any] = {"root": str(root)}
        options.update(gpu_decode_option(plugin, self.device))
        batch = 64 if not self.quick else 8
        student = {"name": "torchvision:resnet18"} if not self.quick else b.student
        teacher = {"name": "torchvision:resnet34"} if not self.quick else b.teacher
        cfg = {
            "seed": 0,
            "epochs": 1,
            "data": {"name": "image_folder", "options": options, "batch_size": batch, "drop_last": True},
            "student": student,
            "teacher": teacher,
            "ce_weight": 0.1,
            "methods": [{"name": "kd", "weight": 0.9}],
            "metrics": [],
            "schedule": {"name": "constant"},
            "train": {"device": b.device, "amp": "bf16", "channels_last": not self.quick, "progress": False},
        }
        record: dict[str, Any] = {"options": options, "images": b.jpeg_count, "size": b.jpeg_size}
        try:
            self.reset_peak()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer = Trainer(parse_config(cfg))
                kdhub_epoch(trainer, 1)  # warm-up: workers, decoder, cuDNN autotuning
                record["streaming_images_per_s"] = round(kdhub_epoch(trainer, 2), 1)
                record["peak_mb"] = self.peak_mb()
                trainer.close()
                del trainer
                # the same models and images per epoch from memory (synthetic tensors of the same shape)
                memory = {**cfg, "data": self.config(batch, b.jpeg_count // batch, "bf16")["data"]}
                memory["data"]["options"].update(image_size=b.jpeg_size, num_classes=10)
                self.reset_peak()
                trainer = Trainer(parse_config(memory))
                kdhub_epoch(trainer, 1)
                record["in_memory_images_per_s"] = round(kdhub_epoch(trainer, 2), 1)
                record["in_memory_peak_mb"] = self.peak_mb()
                trainer.close()
                del trainer
            record["ratio"] = round(record["streaming_images_per_s"] / record["in_memory_images_per_s"], 4)
            self.say(
                f"(f) streaming {record['streaming_images_per_s']:.0f} img/s vs in memory "
                f"{record['in_memory_images_per_s']:.0f} img/s: ratio {record['ratio']:.3f}"
            )
        except Exception as err:
            record["error"] = f"{type(err).__name__}: {err}"
            record["traceback"] = traceback.format_exc(limit=6)
            self.failures.append(f"(f) dataset 'image_folder': {record['error'].splitlines()[0]}")
            self.say(f"(f) FAILED {record['error'].splitlines()[0]}")
        return record

    # the whole suite -----------------------------------------------------------------------------
    def run(self, out_dir: Path) -> int:
        # the hand-written loops run before any Trainer sets the thread count: both get the run's count
        torch.set_num_threads(resolve_threads(None).count)
        env = environment(self.device)
        self.say(f"kdhub {kdhub.__version__} on {env['device_name']}, torch {torch.__version__}")
        self.say(f"budget {self.b.total_s:.0f}s: {asdict(self.b)}")
        sections: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
            ("throughput", "(a)", self.throughput),
            ("pipeline", "(b)", self.pipeline),
            ("plugins", "(c)", self.plugins),
            ("overhead", "(d)", self.overhead),
            ("streaming", "(f)", self.streaming),
        ]
        for key, tag, section in sections:
            if self.left() <= 0:
                self.results[key] = self.skip(tag, "budget spent")
                continue
            try:
                self.results[key] = section()
            except Exception as err:  # a section's crash is reported, the others still run
                message = f"{tag} {key}: {type(err).__name__}: {err}".splitlines()[0]
                self.failures.append(message)
                self.results[key] = {"error": message, "traceback": traceback.format_exc(limit=8)}
                self.say(f"FAILED {message}")
        report = {
            "suite": "kdhub gpu_suite",
            "quick": self.quick,
            "environment": env,
            "budget": asdict(self.b),
            "elapsed_s": round(self.elapsed(), 1),
            "results": self.results,
            "notes": self.notes,
            "failures": self.failures,
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "gpu_suite.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (out_dir / "gpu_suite.md").write_text(markdown(report))
        self.say(f"wrote {out_dir / 'gpu_suite.json'} and {out_dir / 'gpu_suite.md'}")
        for failure in self.failures:
            print(f"FAILED: {failure}", file=sys.stderr)
        return 1 if self.failures else 0


def calibrate_teacher(trainer: Trainer, batches: int) -> None:
    """Give a random teacher the BatchNorm statistics of the data, as a trained one has.

    In eval mode a random teacher's BatchNorm layers do not normalise (running mean 0, variance
    1), so its activations grow to the hundreds through the residual stages and a method that
    regresses them (FT's paraphraser) diverges in a few steps; a trained teacher's do not.
    """
    if trainer.teacher is None:
        return
    norms = [m for m in trainer.teacher.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batches
    trainer.teacher.train()
    with torch.no_grad():
        for step, (images, _, _) in enumerate(trainer.data.train_batches(trainer.batch_size, True)):
            if step == batches:
                break
            trainer.teacher(images)
    trainer.teacher.eval()
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


class _Meter:
    """RepDistiller's AverageMeter."""

    def __init__(self) -> None:
        self.sum: Any = 0.0
        self.count = 0

    def update(self, value: Any, n: int = 1) -> None:
        self.sum += value * n
        self.count += n


def _build(ref: dict[str, Any], num_classes: int, size: int) -> torch.nn.Module:
    return kdhub.create("model", ref["name"], **ref.get("options", {})).build(num_classes, 3, size)


def gpu_decode_option(plugin: type, device: torch.device) -> dict[str, Any]:
    """The image_folder option that asks for GPU JPEG decoding, if it has one (its name contains 'decode')."""
    if device.type != "cuda":
        return {}
    for name, field in getattr(plugin, "Options", kdhub.Options).model_fields.items():
        if "decode" not in name:
            continue
        text = str(field.annotation)
        if field.annotation is bool:
            return {name: True}
        for value in ("gpu", "cuda", "nvjpeg", "device"):
            if f"'{value}'" in text:
                return {name: value}
    return {}


def write_jpeg_folder(root: Path, count: int, size: int, classes: int) -> None:
    """``root/train/<class>/*.jpg`` (count images) and ``root/val/<class>/*.jpg`` (a tenth), random colour blobs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", max(classes, count // 10))):
        for i in range(n):
            cls = i % classes
            folder = root / split / f"class_{cls:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            base[..., cls % 3] = 40 + 20 * cls
            img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
            img.save(folder / f"{i:05d}.jpg", quality=90)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {_cpu_name()}"
    return {
        "date": time.strftime("%Y-%m-%d"),
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "kdhub": kdhub.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cores_available": available_cores(),
    }


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The tables of docs/benchmarks.md's GPU section."""
    env, res = report["environment"], report["results"]
    kind = "CPU smoke test (--quick: tiny models and sizes, NOT a GPU measurement)" if report["quick"] else "GPU"
    lines = [
        f"# kdhub GPU suite — {kind}",
        "",
        f"{env['date']}, {env['device_name']}, torch {env['torch']}, CUDA {env['cuda']}, kdhub {env['kdhub']}, "
        f"{env['threads']} CPU threads of {env['cores_available']} cores; {report['elapsed_s']} s in all.",
        "",
    ]
    a = res.get("throughput", {})
    if a.get("cases"):
        lines += [
            "## (a) Throughput: kdhub vs a hand-written loop (images/s, one process, alternating)",
            "",
            "| batch | setting | kdhub img/s | hand-written img/s | ratio | steps/block | warm-up s "
            "| peak MB (kdhub / hand) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in a["cases"]:
            if "skipped" in c:
                lines.append(f"| {c['batch']} | {c['setting']} | skipped ({c['skipped']}) | | | | | |")
                continue
            peak = c["peak_mb"] or {}
            lines.append(
                f"| {c['batch']} | {c['setting']} | {_fmt(c['kdhub_images_per_s'])} | "
                f"{_fmt(c['hand_written_images_per_s'])} | {c['ratio']:.3f} | {c['steps_per_block']} | "
                f"{c['warmup_s']:.1f} | {_fmt(peak.get('kdhub'))} / {_fmt(peak.get('hand_written'))} |"
            )
        lines.append("")
    b = res.get("pipeline", {})
    if "kdhub" in b:
        k, r = b["kdhub"], b["repdistiller_style"]
        lines += [
            "## (b) The 240-epoch CIFAR-100 recipe (50,000 images, batch 64, a test evaluation per epoch), projected",
            "",
            "| pipeline | setting | img/s | epoch s (train + test) | projected | peak MB |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| kdhub | {k['setting']}, batch {k['batch']} | {_fmt(k['images_per_s'])} | "
            f"{k['train_epoch_s']:.2f} + {k['test_eval_s']:.2f} "
            f"| **{k['projected_minutes']:.1f} min** | {_fmt(k['peak_mb'])} |",
            f"| RepDistiller-style ({r['workers']} workers, PIL + torchvision transforms) | fp32, batch {k['batch']} | "
            f"{_fmt(r['images_per_s'])} | {r['train_epoch_s']:.2f} + {r['test_eval_s']:.2f} "
            f"| **{r['projected_minutes']:.1f} min** | {_fmt(r['peak_mb'])} |",
            "",
            f"kdhub is **{b['speedup']}×** faster than the RepDistiller-style pipeline "
            f"({r['steps_measured']} steps measured; worker start-up {r['worker_startup_s']:.2f} s per epoch).",
            "",
        ]
    elif b:
        lines += ["## (b) The 240-epoch recipe", "", f"not run: {b.get('skipped') or b.get('error')}", ""]
    c = res.get("plugins", {})
    if c.get("runs"):
        lines += [
            f"## (c) Every method and policy, bf16, {c['steps']} steps through the engine",
            "",
            "| plugin | result | host syncs | s | peak MB |",
            "| --- | --- | --- | --- | --- |",
        ]
        for run in c["runs"]:
            result = "ok"
            if "skipped" in run:
                result = f"skipped: {run['skipped']}"
            elif "error" in run:
                result = f"FAILED: {run['error']}"
            lines.append(
                f"| {run['plugin']} | {result.splitlines()[0][:120]} | {_fmt(run.get('host_syncs'))} | "
                f"{_fmt(run.get('seconds'), 1)} | {_fmt(run.get('peak_mb'))} |"
            )
        lines.append("")
    d = res.get("overhead", {})
    if "ratio" in d:
        lines += [
            "## (d) TLLM + the light analysis metrics vs plain KD (whole runs, alternating)",
            "",
            f"{d['epochs']} epochs of {d['train_images']:,} training / {d['test_images']:,} test images, "
            f"setting {d['setting']}; TLLM with a 5 % validation split, metrics "
            f"({', '.join(LIGHT_METRICS)}) every {d['metrics_every']} epochs and at the end.",
            "",
            "| run | seconds | peak MB |",
            "| --- | --- | --- |",
        ]
        for name, values in d["seconds"].items():
            lines.append(f"| {name} | {', '.join(f'{v:.2f}' for v in values)} | {_fmt(d['peak_mb'][name])} |")
        lines += ["", f"ratio (median): **{d['ratio']:.3f}**", ""]
    f = res.get("streaming", {})
    lines += ["## (f) Streaming path (224×224 JPEGs)", ""]
    if "ratio" in f:
        lines += [
            f"{f['images']} JPEGs of {f['size']}×{f['size']}, options {f['options']}: streaming "
            f"{_fmt(f['streaming_images_per_s'])} img/s vs in memory {_fmt(f['in_memory_images_per_s'])} img/s, "
            f"ratio **{f['ratio']:.3f}**; peak {_fmt(f['peak_mb'])} MB vs {_fmt(f['in_memory_peak_mb'])} MB.",
            "",
        ]
    else:
        lines += [f"not run: {f.get('skipped') or f.get('error')}", ""]
    if report["notes"] or report["failures"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [f"- FAILED: {x}" for x in report["failures"]]
        lines.append("")
    return "\n".join(lines)


@contextlib.contextmanager
def _compile_limits() -> Iterator[None]:
    """Several models and batch sizes share code objects: let dynamo keep a graph for each."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    before = getattr(config, name)
    setattr(config, name, max(before, 64))
    try:
        yield
    finally:
        setattr(config, name, before)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for gpu_suite.json and gpu_suite.md")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and steps; runs on CPU (for CI)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --quick)")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    if args.device:
        budget = replace(budget, device=args.device)
    if torch.device(budget.device).type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_suite: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU, "
            "or pass --quick for the CPU smoke test",
            file=sys.stderr,
        )
        return 2
    if torch.device(budget.device).type != "cuda" and not args.quick:
        print(f"gpu_suite: --device {budget.device} is not a GPU; pass --quick for the CPU smoke test", file=sys.stderr)
        return 2
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with _compile_limits():
        return Suite(budget, args.quick).run(args.out)


if __name__ == "__main__":
    sys.exit(main())
