"""The generic distillation loop. It knows plugins only through the registry and their contracts."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdhub import plugins
from kdhub.config import RunConfig, dump_config, parse_config, resolve_plugins
from kdhub.engine import checkpoint
from kdhub.engine.data import DataSource, open_data
from kdhub.engine.distributed import DistEnv, init_distributed
from kdhub.engine.features import FeatureTaps, check_roles, dry_run_shapes
from kdhub.engine.heads import HEADS_ROLE, eval_logits, split_heads
from kdhub.engine.losses import method_loss, split_terms, total
from kdhub.engine.schedule import make_optimizer, make_scheduler
from kdhub.errors import ConfigError, IncompatibleError
from kdhub.method import Method, SetupContext, StepOutputs
from kdhub.metric import EvalBatch, Metric, MetricContext, MetricResult
from kdhub.policy import EpochReport, Policy, PolicyContext
from kdhub.runlog import MemoryLog, RunLog

__all__ = ["RunResult", "Trainer", "pick_device", "run"]

log = logging.getLogger("kdhub")


@dataclass
class RunResult:
    run_id: str | None
    status: str
    best_acc: float
    last_acc: float
    metrics: dict[str, float] = field(default_factory=dict)
    student: nn.Module | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def pick_device(spec: str) -> torch.device:
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
class _Teaching:
    method: Method
    weight: float
    key: str


class Trainer:
    """One run: builds everything from the config, then trains, evaluates, logs and checkpoints."""

    def __init__(self, config: RunConfig, tracker: Any | None = None, resume_run_id: str | None = None) -> None:
        self.config = config
        self.registry = plugins.get_registry()
        self.options = resolve_plugins(config, self.registry)
        self.device = pick_device(config.train.device)
        self.dist: DistEnv = init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.tracker = tracker
        self.log: RunLog = tracker if tracker is not None else MemoryLog()
        self.resume_run_id = resume_run_id
        self.run_id: str | None = None
        self.epoch = 0
        seed_everything(config.seed)
        if config.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self._build()
        # checkpoints are written here, then logged to MLflow; run() removes it at the end
        self.workdir = Path(tempfile.mkdtemp(prefix="kdhub-run-"))

    # construction -----------------------------------------------------------------------------
    def _plugin(self, kind: str, path: str, name: str) -> Any:
        return self.registry.get(kind, name)(self.options[path])

    def _build(self) -> None:
        cfg = self.config
        bundle = self._plugin("dataset", "data", cfg.data.name).load()
        self.data: DataSource = open_data(
            bundle,
            self.device,
            val_fraction=cfg.data.val_fraction,
            train_fraction=cfg.data.train_fraction,
            seed=cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            loader=cfg.data,
        )
        self.num_classes = self.data.num_classes
        self.class_names = self.data.class_names
        per_rank_batch = max(1, cfg.data.batch_size // self.dist.world_size)
        self.batch_size, self.rank_batch = cfg.data.batch_size, per_rank_batch
        self.steps_per_epoch = self.data.steps_per_epoch(self.batch_size, cfg.data.drop_last)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size: {self.batch_size} is larger than the {self.data.size('train')} training images"
            )

        model_plugin = self._plugin("model", "student", cfg.student.name)
        self.student = model_plugin.build(self.num_classes, self.data.in_channels, self.data.image_size).to(self.device)
        self.student_taps = model_plugin.taps(self.student)
        self.teacher: nn.Module | None = None
        self.teacher_taps: dict[str, list[str]] = {}
        if cfg.teacher is not None:
            t_plugin = self._plugin("model", "teacher", cfg.teacher.name)
            self.teacher = t_plugin.build(self.num_classes, self.data.in_channels, self.data.image_size).to(self.device)
            self.teacher_taps = t_plugin.taps(self.teacher)
            if cfg.teacher.weights:
                from kdhub.tracking import resolve_artifact

                uri = self.tracker.uri if self.tracker is not None else cfg.tracking.uri
                path = resolve_artifact(cfg.teacher.weights, uri)
                checkpoint.load_weights(self.teacher, path, f"teacher.weights ({cfg.teacher.weights})")
            else:
                log.warning("teacher has no weights: distilling from a randomly initialised %s", cfg.teacher.name)
            self.teacher.eval().requires_grad_(False)

        self.teaching = [
            _Teaching(
                self._plugin("method", f"methods.{i}", ref.name),
                ref.weight if ref.weight is not None else self.registry.get("method", ref.name).default_weight,
                ref.name,
            )
            for i, ref in enumerate(cfg.methods)
        ]
        method_roles = {r for t in self.teaching for r in t.method.feature_roles}
        for t in self.teaching:
            who = f"methods: method {t.key!r}"
            check_roles(who, cfg.student.name, self.student_taps, t.method.feature_roles, "student")
            if self.teacher is not None:
                check_roles(who, cfg.teacher.name, self.teacher_taps, t.method.feature_roles, "teacher")
        example = self.data.example(2)
        s_shapes, _ = dry_run_shapes(self.student, self.student_taps, example)
        t_shapes = dry_run_shapes(self.teacher, self.teacher_taps, example)[0] if self.teacher is not None else {}
        self.setup_ctx = SetupContext(
            num_classes=self.num_classes,
            num_train=self.data.size("train"),
            epochs=cfg.epochs,
            steps_per_epoch=self.steps_per_epoch,
            student=self.student,
            teacher=self.teacher,
            student_taps=self.student_taps,
            teacher_taps=self.teacher_taps,
            student_shapes=s_shapes,
            teacher_shapes=t_shapes,
            train_labels=self.data.labels("train"),
            device=self.device,
        )
        for t in self.teaching:
            try:
                t.method.setup(self.setup_ctx)
            except IncompatibleError as err:
                raise IncompatibleError(f"methods: method {t.key!r}: {err}") from None
            t.method.to(self.device)
        self.method_params = [p for t in self.teaching for p in t.method.parameters() if p.requires_grad]
        self.s_taps = FeatureTaps(self.student, self.student_taps, method_roles)
        self.t_taps = FeatureTaps(self.teacher, self.teacher_taps, method_roles) if self.teacher is not None else None

        self.policy: Policy = self._plugin("policy", "policy", cfg.policy.name)
        if self.policy.needs_validation and not self.data.has("val"):
            raise ConfigError(
                f"data.val_fraction: policy {cfg.policy.name!r} needs a validation split (set it > 0, e.g. 0.05)"
            )
        val_counts = None
        if self.data.has("val"):
            val_counts = torch.bincount(self.data.labels("val"), minlength=self.num_classes).cpu()
        self.policy.setup(
            PolicyContext(
                epochs=cfg.epochs,
                steps_per_epoch=self.steps_per_epoch,
                num_classes=self.num_classes,
                ce_weight=cfg.ce_weight,
                device=self.device,
                has_validation=self.data.has("val"),
                class_names=self.class_names,
                validation_class_counts=val_counts,
                method_names=[t.key for t in self.teaching],
            )
        )

        self.metrics: list[tuple[Any, Metric]] = []
        for i, ref in enumerate(cfg.metrics):
            metric = self._plugin("metric", f"metrics.{i}", ref.name)
            if metric.needs_teacher and self.teacher is None:
                raise ConfigError(f"metrics.{i}: metric {ref.name!r} needs a teacher")
            if ref.split == "val" and not self.data.has("val"):
                raise ConfigError(f"metrics.{i}.split: 'val' needs data.val_fraction > 0")
            check_roles(
                f"metrics.{i}: metric {ref.name!r}",
                cfg.student.name,
                self.student_taps,
                metric.feature_roles(),
                "student",
            )
            if self.teacher is not None:
                check_roles(
                    f"metrics.{i}: metric {ref.name!r}",
                    cfg.teacher.name,
                    self.teacher_taps,
                    metric.feature_roles(),
                    "teacher",
                )
            self.metrics.append((ref, metric))

        if cfg.train.channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
        self.train_model: nn.Module = self.student
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
        if cfg.train.compile:
            self.train_model = torch.compile(self.train_model)
        self._new_optimizer(start_step=0)
        self.best = {"selection": -math.inf, "test_acc": -math.inf, "epoch": 0, "test_at_selection": math.nan}
        self.last_acc = math.nan
        self._teacher_cache: dict[str, Tensor] = {}
        self.history: list[dict[str, float]] = []

    def _trainable(self) -> list[nn.Parameter]:
        return list(self.student.parameters()) + self.method_params

    def _new_optimizer(self, start_step: int) -> None:
        cfg = self.config
        self.optimizer = make_optimizer(self._trainable(), cfg.optim)
        remaining = cfg.epochs - start_step // self.steps_per_epoch
        self.scheduler = make_scheduler(
            self.optimizer, cfg.schedule, self.steps_per_epoch, max(1, remaining), cfg.optim.lr
        )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.train.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # training ---------------------------------------------------------------------------------
    def _forward(self, images: Tensor, with_teacher: bool) -> tuple[Tensor, dict, Tensor | None, dict]:
        if self.config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            s_logits, heads = split_heads(self.train_model(images))
            s_feats = self.s_taps.collect()
            if heads:
                s_feats[HEADS_ROLE] = heads
            t_logits, t_feats = None, {}
            if with_teacher and self.teacher is not None:
                with torch.no_grad():
                    t_logits = eval_logits(self.teacher(images))
                    t_feats = self.t_taps.collect()
        return s_logits.float(), s_feats, (t_logits.float() if t_logits is not None else None), t_feats

    def _init_stage(self) -> None:
        """Initialisation stages of methods that declare them (AB, FT, FSP), before epoch 1."""
        for t in self.teaching:
            if t.method.init_epochs <= 0:
                continue
            optimizer = make_optimizer(self._trainable(), self.config.optim)
            for init_epoch in range(1, t.method.init_epochs + 1):
                total = torch.zeros((), device=self.device)
                for step, (x, y, idx) in enumerate(
                    self.data.train_batches(self.batch_size, self.config.data.drop_last)
                ):
                    s_logits, s_feats, t_logits, t_feats = self._forward(x, True)
                    out = StepOutputs(s_logits, t_logits, y, idx, 0, step, None, s_feats, t_feats)
                    loss = t.method.init_loss(out)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach()
                self.log.metrics({f"init/{t.key}": (total / self.steps_per_epoch).item()}, step=init_epoch)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.config
        self.student.train()
        for t in self.teaching:
            t.method.train()
        sums: dict[str, Tensor] = {}
        zero = torch.zeros((), device=self.device)
        correct, seen = zero.clone(), zero.clone()
        start = time.perf_counter()
        step0 = (epoch - 1) * self.steps_per_epoch
        plan = None
        batches = self.data.train_batches(self.batch_size, cfg.data.drop_last)
        for step, (x, y, idx) in enumerate(self._progress(batches, epoch), start=step0):
            plan = self.policy.plan(epoch, step)
            teach = plan.kd_weight > 0 and bool(self.teaching)
            s_logits, s_feats, t_logits, t_feats = self._forward(x, teach)
            if plan.teacher_scale is not None and t_logits is not None:
                t_logits = t_logits * plan.teacher_scale
            loss = zero
            if plan.ce_weight > 0:
                ce = plan.ce_weight * F.cross_entropy(s_logits, y)
                loss = loss + ce
                sums["ce"] = sums.get("ce", zero) + ce.detach()
            if teach:
                out = StepOutputs(s_logits, t_logits, y, idx, epoch, step, plan.class_mask, s_feats, t_feats)
                replacement = self.policy.replacement_loss(out) if plan.class_mask is not None else None
                for t in self.teaching:
                    for term, value in method_loss(t.method, out, replacement).items():
                        weighted = (plan.kd_weight * t.weight) * value
                        loss = loss + weighted
                        key = f"{t.key}.{term}" if term else t.key
                        sums[key] = sums.get(key, zero) + weighted.detach()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.dist.average_gradients(self.method_params)
            self.optimizer.step()
            self.scheduler.step()
            sums["total"] = sums.get("total", zero) + loss.detach()
            correct += (s_logits.argmax(1) == y).sum()
            seen += y.numel()
        totals = torch.stack([v.float() for v in sums.values()] + [correct, seen])
        self.dist.all_reduce_([totals])
        *loss_sums, n_correct, n_seen = totals.tolist()  # the one host sync of the epoch
        elapsed = time.perf_counter() - start  # after the sync, so queued device work is counted
        steps = self.steps_per_epoch * self.dist.world_size
        values = {f"loss/{k}": v / steps for k, v in zip(sums, loss_sums, strict=True)}
        values["train/acc"] = 100 * n_correct / max(1.0, n_seen)
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        values["images_per_s"] = n_seen / max(elapsed, 1e-9)
        if plan is not None:
            values["weight/ce"], values["weight/kd"] = plan.ce_weight, plan.kd_weight
        return values

    def _progress(self, batches: Any, epoch: int) -> Any:
        if not (self.config.train.progress and self.dist.is_main and self.steps_per_epoch >= 50):
            return batches
        from tqdm.auto import tqdm

        return tqdm(batches, total=self.steps_per_epoch, desc=f"epoch {epoch}", leave=False, unit="batch")

    # evaluation -------------------------------------------------------------------------------
    def _metric_context(self, split: str, epoch: int) -> MetricContext:
        return MetricContext(
            num_classes=self.num_classes,
            split=split,
            epoch=epoch,
            device=self.device,
            class_names=self.class_names,
            student=self.student,
            teacher=self.teacher,
            num_samples=self.data.size(split),
            seed=self.config.seed,
            student_shapes=self.setup_ctx.student_shapes,
            teacher_shapes=self.setup_ctx.teacher_shapes,
        )

    @torch.no_grad()
    def evaluate(
        self, split: str, metrics: list[Metric], epoch: int, class_losses: bool = False
    ) -> tuple[float, dict[int, MetricResult], Tensor | None]:
        """Accuracy on ``split``, the results of ``metrics`` and (optionally) per-class distillation losses."""
        self.student.eval()
        for t in self.teaching:
            t.method.eval()
        roles = {r for m in metrics for r in m.feature_roles()}
        if class_losses:
            roles |= {r for t in self.teaching for r in t.method.feature_roles}
        for metric in metrics:
            metric.reset(self._metric_context(split, epoch))
        correct = torch.zeros((), device=self.device, dtype=torch.float64)
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        loss_sum = torch.zeros(self.num_classes, device=self.device, dtype=torch.float64)
        loss_count = torch.zeros(self.num_classes, device=self.device, dtype=torch.float64)
        cache = self._teacher_cache.get(split)
        need_teacher = self.teacher is not None and (bool(roles) or cache is None)
        new_cache: list[Tensor] = []
        with FeatureTaps(self.student, self.student_taps, roles) as s_rec, contextlib.ExitStack() as stack:
            t_rec = (
                stack.enter_context(FeatureTaps(self.teacher, self.teacher_taps, roles))
                if self.teacher is not None
                else None
            )
            offset = 0
            for x, y, idx in self.data.eval_batches(split, self.config.data.eval_batch_size):
                with self._autocast():
                    s_logits = eval_logits(self.student(x)).float()
                    t_logits = eval_logits(self.teacher(x)).float() if need_teacher else None
                if self.teacher is not None and t_logits is None:
                    t_logits = cache[offset : offset + len(y)]
                elif t_logits is not None:
                    new_cache.append(t_logits)
                offset += len(y)
                batch = EvalBatch(s_logits, t_logits, y, idx, s_rec.collect(), t_rec.collect() if t_rec else {})
                correct += (s_logits.argmax(1) == y).sum()
                count += y.numel()
                for metric in metrics:
                    metric.update(batch)
                if class_losses:
                    out = StepOutputs(
                        s_logits, t_logits, y, idx, epoch, 0, None, batch.student_features, batch.teacher_features
                    )
                    per_sample = [
                        t.weight * total(split_terms(t.method.loss(out))) for t in self.teaching if t.method.per_sample
                    ]
                    method_losses = sum(per_sample[1:], per_sample[0]) if per_sample else None
                    losses = self.policy.sample_losses(out, method_losses)
                    if losses is not None:
                        loss_sum += torch.bincount(y, weights=losses.double(), minlength=self.num_classes)
                        loss_count += torch.bincount(y, minlength=self.num_classes)
        if self.teacher is not None and cache is None and new_cache and not roles:
            self._teacher_cache[split] = torch.cat(new_cache)
        self.dist.all_reduce_([correct, count, loss_sum, loss_count])
        results = {}
        for i, metric in enumerate(metrics):
            self.dist.all_reduce_(list(metric.accumulators().values()))
            results[i] = metric.compute()
        self.student.train()
        acc = 100 * correct.item() / max(1.0, count.item())
        per_class = (loss_sum / loss_count).cpu() if class_losses else None  # 0/0 -> NaN for an empty class
        return acc, results, per_class

    def _log_results(self, split: str, name: str, result: MetricResult, epoch: int, final: bool) -> dict[str, float]:
        scalars = {f"{split}/{name}/{k}": v for k, v in result.scalars.items()}
        self.log.metrics(scalars, step=epoch)
        suffix = "" if final else f"_epoch_{epoch:03d}"
        for table_name, table in result.tables.items():
            self.log.table(f"{split}/{table_name}{suffix}", table)
        for fig_name, fig in result.figures.items():
            self.log.figure(f"{split}/{fig_name}{suffix}", fig)
        return scalars

    def _scheduled_metrics(self, epoch: int, final: bool) -> dict[str, float]:
        by_split: dict[str, list[tuple[str, Metric]]] = {}
        for ref, metric in self.metrics:
            due = final or (ref.every and epoch % ref.every == 0) or epoch in ref.at
            if due:
                by_split.setdefault(ref.split, []).append((ref.name, metric))
        logged: dict[str, float] = {}
        for split, items in by_split.items():
            _, results, _ = self.evaluate(split, [m for _, m in items], epoch)
            for i, (name, _) in enumerate(items):
                logged.update(self._log_results(split, name, results[i], epoch, final))
        return logged

    # state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "format": "kdhub-checkpoint-1",
            "epoch": self.epoch,
            "model": self.student.state_dict(),
            "model_spec": {"name": cfg.student.name, "options": cfg.student.options, "num_classes": self.num_classes},
            "methods": [t.method.state_dict() for t in self.teaching],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "policy": self.policy.state_dict(),
            "metrics": [m.state_dict() for _, m in self.metrics],
            "data": self.data.state_dict(),
            "rng": checkpoint.rng_state(),
            "best": dict(self.best),
            "last_acc": self.last_acc,
            "history": list(self.history),
            "best_state": self._best_state(),
        }

    def _best_state(self) -> dict[str, Any] | None:
        path = self.workdir / "checkpoints" / "best.pt"
        return checkpoint.load(path) if path.exists() else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["model"])
        for t, s in zip(self.teaching, state["methods"], strict=True):
            t.method.load_state_dict(s)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.policy.load_state_dict(state["policy"])
        for (_, m), s in zip(self.metrics, state["metrics"], strict=True):
            m.load_state_dict(s)
        self.data.load_state_dict(state["data"])
        checkpoint.set_rng_state(state["rng"])
        self.best, self.last_acc, self.history = dict(state["best"]), state["last_acc"], list(state["history"])
        self.epoch = state["epoch"]
        if state.get("best_state") is not None:
            checkpoint.save(state["best_state"], self.workdir / "checkpoints" / "best.pt")

    def _save(self, name: str, state: dict[str, Any], folder: str = "checkpoints") -> Path:
        path = checkpoint.save(state, self.workdir / folder / name)
        if self.tracker is not None and self.config.tracking.log_checkpoints:
            self.tracker.artifact(path, folder)
        return path

    def _restore_best(self) -> None:
        path = self.workdir / "checkpoints" / "best.pt"
        if not path.exists():
            return
        state = checkpoint.load(path)
        self.student.load_state_dict(state["model"])
        for t, s in zip(self.teaching, state["methods"], strict=True):
            t.method.load_state_dict(s)

    # the run ----------------------------------------------------------------------------------
    def fit(self) -> RunResult:
        cfg = self.config
        start_epoch = self.epoch + 1
        if self.epoch == 0:
            for _, metric in self.metrics:
                metric.start(self._metric_context("train", 0))
            self._init_stage()
        plugins.notify("run_started", run=self)
        epochs = range(start_epoch, cfg.epochs + 1)
        bar = None
        if cfg.train.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.epochs, initial=start_epoch - 1, desc=cfg.tracking.run_name or "train", unit="epoch")
        for epoch in epochs:
            self.epoch = epoch
            if self.tracker is not None:
                self.tracker.at_step(epoch)
            values = self._train_epoch(epoch)
            if epoch % cfg.train.eval_every == 0 or epoch == cfg.epochs:
                values["test/acc"], _, _ = self.evaluate("test", [], epoch)
                self.last_acc = values["test/acc"]
            class_losses, val_acc = None, None
            if self.data.has("val"):
                val_acc, _, class_losses = self.evaluate("val", [], epoch, class_losses=self.policy.wants_class_losses)
                values["val/acc"] = val_acc
            self._track_best(epoch, val_acc, values.get("test/acc"))
            values.update({"test/acc_best": self.best["test_acc"]})
            report = EpochReport(epoch, self.log, val_acc, values.get("test/acc"), class_losses)
            action = self.policy.epoch_ended(report)
            if epoch < cfg.epochs:
                values.update(self._scheduled_metrics(epoch, final=False))
            values.update(self.data.stats())
            self.log.metrics(values, step=epoch)
            self.history.append({"epoch": epoch, **values})
            if action.restore_best:
                self._restore_best()
                self.log.metrics({"policy/restored_best_epoch": self.best["epoch"]}, step=epoch)
            if action.reset_optimizer:
                self._new_optimizer(start_step=epoch * self.steps_per_epoch)
            if self.dist.is_main:
                if epoch % cfg.checkpoint.resume_every == 0 or epoch == cfg.epochs:
                    self._save("last.pt", self.state_dict())
                if cfg.checkpoint.every and epoch % cfg.checkpoint.every == 0:
                    self._save(
                        f"epoch_{epoch:03d}.pt",
                        {
                            "model": self.student.state_dict(),
                            "epoch": epoch,
                            "model_spec": self.state_dict()["model_spec"],
                        },
                    )
            plugins.notify("epoch_ended", run=self, epoch=epoch, metrics=values)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss/total']:.3f}", acc=f"{self.last_acc:.1f}")
        if bar is not None:
            bar.close()
        final = self._scheduled_metrics(cfg.epochs, final=True)
        summary = {
            "test/acc_last": self.last_acc,
            "test/acc_best": self.best["test_acc"],
            "best_epoch": self.best["epoch"],
        }
        if self.data.has("val"):
            summary["test/acc_at_best_val"] = self.best["test_at_selection"]
        self.log.metrics(summary, step=cfg.epochs)
        if self.dist.is_main:
            self._save(
                "final.pt",
                {
                    "model": self.student.state_dict(),
                    "epoch": cfg.epochs,
                    "model_spec": self.state_dict()["model_spec"],
                },
            )
        return RunResult(
            self.run_id,
            "FINISHED",
            self.best["test_acc"],
            self.last_acc,
            {**final, **summary},
            self.student,
            self.history,
        )

    def _track_best(self, epoch: int, val_acc: float | None, test_acc: float | None) -> None:
        if test_acc is not None and test_acc > self.best["test_acc"]:
            self.best["test_acc"] = test_acc
        selection = val_acc if val_acc is not None else test_acc
        if selection is not None and selection > self.best["selection"]:
            self.best.update(
                selection=selection, epoch=epoch, test_at_selection=test_acc if test_acc is not None else math.nan
            )
            state = {"model": self.student.state_dict(), "methods": [t.method.state_dict() for t in self.teaching]}
            checkpoint.save(state, self.workdir / "checkpoints" / "best.pt")


def run(config: RunConfig | dict[str, Any], resume_run_id: str | None = None, track: bool = True) -> RunResult:
    """Train one run from a config (a RunConfig or a dict), logging it to MLflow unless ``track`` is False.

    With ``resume_run_id``, the run's ``checkpoints/last.pt`` is loaded and training continues into
    the same MLflow run.
    """
    if isinstance(config, dict):
        config = parse_config(config)
    from kdhub.tracking import Tracker, default_run_name, resolve_artifact, run_params, run_tags

    env_rank = int(os.environ.get("RANK", "0"))
    tracker = Tracker(config.tracking.uri, config.tracking.experiment) if track and env_rank == 0 else None
    trainer = Trainer(config, tracker, resume_run_id)
    if resume_run_id is not None:
        uri = tracker.uri if tracker is not None else config.tracking.uri
        trainer.load_state_dict(checkpoint.load(resolve_artifact(f"runs:/{resume_run_id}/checkpoints/last.pt", uri)))
    if tracker is not None:
        trainer.run_id = tracker.start(
            config.tracking.run_name or default_run_name(config), run_tags(config), resume_run_id
        )
        if resume_run_id is None:
            tracker.params(run_params(config, trainer.options))
            tracker.text("config.yaml", dump_config(config))
    try:
        result = trainer.fit()
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        if tracker is not None:
            tracker.finish(status, f"{type(err).__name__}: {err} (resume with: kdhub run --resume {trainer.run_id})")
        plugins.notify("run_finished", run=trainer, status=status, error=err)
        raise
    finally:
        shutil.rmtree(trainer.workdir, ignore_errors=True)
    if tracker is not None:
        tracker.finish("FINISHED")
    plugins.notify("run_finished", run=trainer, status="FINISHED", error=None)
    return result
