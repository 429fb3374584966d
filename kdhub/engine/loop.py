"""The epoch loop: one generic distillation loop that knows plugins only through their contracts.

:meth:`Trainer.fit` runs, before the first epoch, the metrics' ``start`` and the methods'
initialisation stages, then the ``kdhub_run_started`` hook. Every epoch then does, in order:

1. **train** — one pass over the shuffled, augmented training split; each step asks the policy
   for its plan (loss weights, taught classes), runs both models, adds cross-entropy and every
   method's weighted, masked loss, and steps the optimizer and the schedule;
2. **test** — test accuracy (every ``train.eval_every`` epochs and at the last);
3. **validation** — validation accuracy and, for policies that want them, per-class
   distillation losses (``holdout`` accuracy too when that split exists);
4. **best** — the best student so far, by validation accuracy (test accuracy without a
   validation split), is kept;
5. **policy** — ``policy.epoch_ended`` sees the accuracies and class losses and may ask for a
   restore or a reset;
6. **scheduled metrics** — the metrics due this epoch (``every`` / ``at``) on their splits;
7. **log** — the epoch's values are staged for MLflow;
8. **restore / reset** — the best checkpoint is restored and the optimizer and schedule reset,
   if the policy asked;
9. **checkpoint** — ``epoch_XXX.pt`` (when due), then ``last.pt``, which commits the epoch;
   the staged values are then logged, so a resumed run neither repeats nor skips a step;
10. **hooks** — ``kdhub_epoch_ended`` with a read-only :class:`kdhub.RunView`.

After the last epoch: every metric on its split (tables and figures without an epoch suffix),
the summary values and ``final.pt``.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdhub.contract.config import RunConfig
from kdhub.contract.errors import KdhubError
from kdhub.contract.metric import Metric, MetricContext, MetricResult
from kdhub.contract.outputs import StepOutputs
from kdhub.contract.policy import EpochAction, EpochReport
from kdhub.contract.runlog import EpochLog, MemoryLog, RunLog
from kdhub.contract.runview import RunView
from kdhub.engine import checkpoint, speed
from kdhub.engine.build import RunParts, build_run, pick_device, seed_everything
from kdhub.engine.evaluate import Evaluation, Evaluator
from kdhub.engine.heads import HEADS_ROLE, split_heads
from kdhub.engine.hostsync import training_steps
from kdhub.engine.losses import method_loss
from kdhub.engine.schedule import make_optimizer, make_scheduler
from kdhub.engine.tally import EpochTally
from kdhub.registry import loading as plugins
from kdhub.registry.resolve import resolve_plugins
from kdhub.tracking import resolve_artifact

__all__ = ["RunResult", "Trainer", "pick_device", "seed_everything"]


_ENGINE_ACCURACY_SPLITS = ("test", "val", "holdout")
"""Splits whose top-1 accuracy the engine logs as ``<split>/acc`` (a metric's ``acc`` scalar is not repeated)."""


def metric_key(split: str, metric: str, scalar: str) -> str:
    """The MLflow key of a metric's scalar: ``<split>/<metric>/<scalar>``; an ``acc`` on a split whose top-1
    accuracy the engine logs itself is that same number, ``<split>/acc``."""
    return f"{split}/acc" if scalar == "acc" and split in _ENGINE_ACCURACY_SPLITS else f"{split}/{metric}/{scalar}"


@dataclass
class RunResult:
    run_id: str | None
    status: str
    best_acc: float
    last_acc: float
    metrics: dict[str, float] = field(default_factory=dict)
    student: nn.Module | None = None
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """One run: its parts (:func:`kdhub.engine.build.build_run`), the optimizer, and the epoch loop."""

    def __init__(self, config: RunConfig, tracker: Any | None = None, resume_run_id: str | None = None) -> None:
        self.config = config
        self.registry = plugins.get_registry()
        self.options = resolve_plugins(config, self.registry)
        self.threads = speed.configure_process(config.train, pick_device(config.train.device)).count
        self.tracker = tracker
        self.resume_run_id = resume_run_id
        self.run_id: str | None = None
        self.epoch = 0
        # checkpoints and downloaded artifacts live here until close() (a `with Trainer(...)` block)
        self.workdir = Path(tempfile.mkdtemp(prefix="kdhub-run-"))
        self.fetched: dict[str, Path] = {}
        try:
            self.parts: RunParts = build_run(config, self.registry, self.options, self.fetch)
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        p = self.parts
        self.device, self.dist, self.data = p.device, p.dist, p.data
        self.student, self.teacher, self.teaching = p.student, p.teacher, p.teaching
        self.policy, self.metrics = p.policy, p.metrics
        self.num_classes, self.class_names = p.num_classes, p.class_names
        self.batch_size, self.steps_per_epoch = p.batch_size, p.steps_per_epoch
        self.log: RunLog = tracker if tracker is not None else MemoryLog()
        self.epoch_log = EpochLog(self.log)
        self.checkpoints = checkpoint.Checkpointer(
            self.workdir / "checkpoints",
            p.model_spec,
            self._publish if tracker is not None and config.tracking.log_checkpoints else None,
        )
        self.evaluator = Evaluator(
            data=p.data,
            student=p.student,
            teacher=p.teacher,
            student_taps=p.student_taps,
            teacher_taps=p.teacher_taps,
            teaching=p.teaching,
            policy=p.policy,
            dist=p.dist,
            device=p.device,
            batch_size=config.data.eval_batch_size,
            autocast=self._autocast,
        )
        model: nn.Module = p.student
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(p.student, device_ids=ids)
        self.train_model = speed.compile_model(
            model, config.train.compile, f"student ({config.student.name})", config.train.compile_backend
        )
        self.teacher_forward = (
            speed.TeacherForward(p.teacher, p.teacher_recorder, config.train, self.device, config.teacher.name)
            if p.teacher is not None and config.teacher is not None
            else None
        )
        self._new_optimizer(start_step=0)
        self.best = {"selection": -math.inf, "test_acc": -math.inf, "epoch": 0, "test_at_selection": math.nan}
        self.last_acc = math.nan
        self.history: list[dict[str, float]] = []
        self.logged: dict[str, int] = {}  # key -> last step already in MLflow (a resumed run)

    # helpers ----------------------------------------------------------------------------------
    def fetch(self, reference: str, where: str = "") -> Path:
        """A local file for a path or ``runs:/`` reference, downloaded once into the work folder;
        ``where`` (a config path) names it in errors."""
        if reference not in self.fetched:
            uri = self.tracker.uri if self.tracker is not None else self.config.tracking.uri
            folder = self.workdir / "downloads" / str(len(self.fetched))
            self.fetched[reference] = resolve_artifact(reference, uri, folder, where)
        return self.fetched[reference]

    def _publish(self, path: Path, folder: str) -> None:
        assert self.tracker is not None
        self.tracker.artifact(path, folder)

    def _trainable(self) -> list[nn.Parameter]:
        return list(self.student.parameters()) + self.parts.method_params

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

    def view(self) -> RunView:
        """The read-only view of this run that lifecycle hooks receive."""
        return RunView(
            run_id=self.run_id,
            config=self.config.model_copy(deep=True),
            epoch=self.epoch,
            epochs=self.config.epochs,
            num_classes=self.num_classes,
            class_names=tuple(self.class_names),
            history=tuple(types.MappingProxyType(dict(h)) for h in self.history),
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            tracking_uri=self.tracker.uri if self.tracker is not None else self.config.tracking.uri,
        )

    # training ---------------------------------------------------------------------------------
    def _forward(self, images: Tensor, with_teacher: bool) -> tuple[Tensor, dict, Tensor | None, dict]:
        if self.config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        s_rec, t_rec = self.parts.student_recorder, self.parts.teacher_recorder
        with self._autocast():
            s_logits, heads = split_heads(self.train_model(images))
            s_feats = s_rec.collect()
            if heads:  # a model with several heads (DeiT's distillation token): the others go to the methods
                s_feats[HEADS_ROLE] = heads
        t_logits: Tensor | None = None
        t_feats: dict[str, list[Tensor]] = {}
        if with_teacher and self.teacher_forward is not None and t_rec is not None:
            t_logits, t_feats = self.teacher_forward(images)
        return s_logits.float(), s_feats, t_logits, t_feats

    def _init_stages(self) -> None:
        """Initialisation stages of methods that declare them (AB, FT, FSP), before epoch 1."""
        for t in self.teaching:
            if t.method.init_epochs <= 0:
                continue
            optimizer = make_optimizer(self._trainable(), self.config.optim)
            for init_epoch in range(1, t.method.init_epochs + 1):
                loss_sum = torch.zeros((), device=self.device)
                batches = training_steps(self.data.train_batches(self.batch_size, self.config.data.drop_last))
                for step, (x, y, idx) in enumerate(batches):
                    s_logits, s_feats, t_logits, t_feats = self._forward(x, True)
                    out = StepOutputs(
                        student_logits=s_logits,
                        teacher_logits=cast(Tensor, t_logits),  # None without a teacher
                        labels=y,
                        indices=idx,
                        epoch=0,
                        step=step,
                        student_features=s_feats,
                        teacher_features=t_feats,
                    )
                    with self._autocast():
                        loss = t.method.init_loss(out)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += loss.detach()
                self.log.metrics({f"init/{t.key}": (loss_sum / self.steps_per_epoch).item()}, step=init_epoch)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.config
        self.student.train()
        for t in self.teaching:
            t.method.train()
        tally = EpochTally(epoch, self.steps_per_epoch, self.device, self.dist, cfg.train.finite_check_steps)
        zero = torch.zeros((), device=self.device)
        start = time.perf_counter()
        plan = None
        batches = training_steps(self.data.train_batches(self.batch_size, cfg.data.drop_last))
        for step, (x, y, idx) in enumerate(self._progress(batches, epoch), start=tally.step0):
            plan = self.policy.plan(epoch, step)
            teach = plan.kd_weight > 0 and bool(self.teaching)
            s_logits, s_feats, t_logits, t_feats = self._forward(x, teach)
            if plan.teacher_scale is not None and t_logits is not None:
                t_logits = t_logits * plan.teacher_scale
            loss = zero
            ce_weight = cfg.ce_weight if plan.ce_weight is None else plan.ce_weight  # None: the run's
            if ce_weight > 0:
                ce = ce_weight * F.cross_entropy(s_logits, y)
                loss = loss + ce
                tally.term("ce", ce.detach(), step)
            if teach:
                out = StepOutputs(
                    student_logits=s_logits,
                    teacher_logits=cast(Tensor, t_logits),  # None without a teacher
                    labels=y,
                    indices=idx,
                    epoch=epoch,
                    step=step,
                    class_mask=plan.class_mask,
                    student_features=s_feats,
                    teacher_features=t_feats,
                )
                with self._autocast():  # methods' own layers (regressors, embeddings) in the forward's precision
                    replacement = self.policy.replacement_loss(out) if plan.class_mask is not None else None
                    for t in self.teaching:
                        for term, value in method_loss(t.method, out, replacement).items():
                            weighted = (plan.kd_weight * t.weight) * value
                            loss = loss + weighted
                            tally.term(f"{t.key}.{term}" if term else t.key, weighted.detach(), step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.dist.average_gradients(self.parts.method_params)
            self.optimizer.step()
            self.scheduler.step()
            tally.step(loss.detach(), s_logits, y, step)
        losses, correct, seen = tally.finish(self._trainable())  # the one host sync of the epoch
        elapsed = time.perf_counter() - start  # after the sync, so queued device work is counted
        values = {f"loss/{k}": v for k, v in losses.items()}
        values["train/acc"] = 100 * correct / max(1.0, seen)
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        values["images_per_s"] = seen / max(elapsed, 1e-9)
        if plan is not None:
            values["policy/ce_weight"] = cfg.ce_weight if plan.ce_weight is None else plan.ce_weight
            if self.teaching:  # a run that distils nothing has no distillation factor to show
                values["policy/distill_factor"] = plan.kd_weight
        return values

    def _progress(self, batches: Any, epoch: int) -> Any:
        if not (self.config.train.progress and self.dist.is_main and self.steps_per_epoch >= 50):
            return batches
        from tqdm.auto import tqdm

        return tqdm(batches, total=self.steps_per_epoch, desc=f"epoch {epoch}", leave=False, unit="batch")

    # evaluation -------------------------------------------------------------------------------
    def metric_context(self, split: str, epoch: int) -> MetricContext:
        return MetricContext(
            num_classes=self.num_classes,
            split=split,
            epoch=epoch,
            device=self.device,
            class_names=self.class_names,
            student=self.student,
            teacher=self.teacher,
            num_samples=self.data.size(split),
            batch_size=self.config.data.eval_batch_size,
            seed=self.config.seed,
            student_shapes=self.parts.setup.student_shapes,
            teacher_shapes=self.parts.setup.teacher_shapes,
        )

    def evaluate(self, split: str, metrics: list[Metric], epoch: int, class_losses: bool = False) -> Evaluation:
        """Accuracy on ``split``, the results of ``metrics`` and (optionally) per-class distillation losses."""
        return self.evaluator.evaluate(split, metrics, self.metric_context(split, epoch), class_losses)

    def _evaluate_epoch(self, epoch: int, values: dict[str, float]) -> Tensor | None:
        """Test, validation and holdout accuracy of the epoch into ``values``; the policy's class losses."""
        if epoch % self.config.train.eval_every == 0 or epoch == self.config.epochs:
            values["test/acc"] = self.last_acc = self.evaluate("test", [], epoch).accuracy
        class_losses = None
        if self.data.has("val"):
            val = self.evaluate("val", [], epoch, class_losses=self.policy.wants_class_losses)
            values["val/acc"], class_losses = val.accuracy, val.class_losses
        if self.data.has("holdout"):
            values["holdout/acc"] = self.evaluate("holdout", [], epoch).accuracy
        return class_losses

    def _log_results(self, split: str, name: str, result: MetricResult, epoch: int, final: bool) -> dict[str, float]:
        """A metric's scalars as ``<split>/<metric>/<scalar>``; its tables and figures logged.

        A scalar ``acc`` on a split whose top-1 accuracy the engine logs itself (test, val, holdout)
        is that same number: it goes to ``<split>/acc`` instead of a second key.
        """
        scalars = {metric_key(split, name, k): v for k, v in result.scalars.items()}
        suffix = "" if final else f"_epoch_{epoch:03d}"
        for table_name, table in result.tables.items():
            self.epoch_log.table(f"{split}/{table_name}{suffix}", table)
        for fig_name, fig in result.figures.items():
            self.epoch_log.figure(f"{split}/{fig_name}{suffix}", fig)
        return scalars

    def view_columns(self) -> list[str]:
        """The keys of the scalars the run's metrics declare as run-list columns (``Metric.columns``)."""
        keys = (metric_key(ref.split, ref.name, k) for ref, metric in self.metrics for k in metric.columns)
        return list(dict.fromkeys(keys))

    def _scheduled_metrics(self, epoch: int, final: bool) -> dict[str, float]:
        """The metrics due at ``epoch`` (all of them when ``final``), each split evaluated once."""
        by_split: dict[str, list[tuple[str, Metric]]] = {}
        for ref, metric in self.metrics:
            due = final or (ref.every and epoch % ref.every == 0) or epoch in ref.at
            if due:
                by_split.setdefault(ref.split, []).append((ref.name, metric))
        logged: dict[str, float] = {}
        for split, items in by_split.items():
            evaluation = self.evaluate(split, [m for _, m in items], epoch)
            for (name, _), result in zip(items, evaluation.results, strict=True):
                logged.update(self._log_results(split, name, result, epoch, final))
        return logged

    # state ------------------------------------------------------------------------------------
    def _process_state(self) -> dict[str, Any]:
        """What differs between torchrun's processes: methods' state (CRD's memory banks), metrics, data, RNG."""
        return {
            "methods": [t.method.state_dict() for t in self.teaching],
            "metrics": [m.state_dict() for _, m in self.metrics],
            "data": self.data.state_dict(),
            "rng": checkpoint.rng_state(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything resuming needs: models, methods, optimizer, schedule, policy, metrics, data and RNG.

        Under torchrun every process's own part is gathered (``processes``, by rank): a collective
        call, made by every process; the full state is returned on rank 0 only (None elsewhere).
        """
        processes = self.dist.gather(checkpoint.to_cpu(self._process_state()))
        if processes is None:
            return {}
        return {
            "format": "kdhub-checkpoint-2",
            "epoch": self.epoch,
            "model": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "policy": self.policy.state_dict(),
            "processes": processes,
            "best": dict(self.best),
            "last_acc": self.last_acc,
            "history": list(self.history),
            "pending_log": {step: dict(values) for step, values in self.epoch_log.pending.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # kdhub-checkpoint-1 (one process) kept these at the top level
        processes = state.get("processes") or [{k: state[k] for k in ("methods", "metrics", "data", "rng")}]
        if len(processes) != self.dist.world_size:
            raise KdhubError(
                f"the checkpoint was written by {len(processes)} process(es); resume it with as many"
                f" (torchrun --nproc_per_node {len(processes)}), not {self.dist.world_size}"
            )
        own = processes[self.dist.rank]
        self.student.load_state_dict(state["model"])
        for t, s in zip(self.teaching, own["methods"], strict=True):
            t.method.load_state_dict(s)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.policy.load_state_dict(state["policy"])
        for (_, m), s in zip(self.metrics, own["metrics"], strict=True):
            m.load_state_dict(s)
        self.data.load_state_dict(own["data"])
        checkpoint.set_rng_state(own["rng"])
        self.best, self.last_acc, self.history = dict(state["best"]), state["last_acc"], list(state["history"])
        self.epoch = state["epoch"]
        self.checkpoints.keep_best(state.get("best_state"))
        self.epoch_log.pending = {step: dict(values) for step, values in state.get("pending_log", {}).items()}

    # the run ----------------------------------------------------------------------------------
    def fit(self) -> RunResult:
        """Train from the current epoch to the last, evaluate, log and checkpoint (see the module docstring)."""
        self._start()
        bar = self._epoch_bar()
        for epoch in range(self.epoch + 1, self.config.epochs + 1):
            self.epoch = epoch
            self.epoch_log.at_step(epoch)
            values = self._train_epoch(epoch)
            class_losses = self._evaluate_epoch(epoch, values)
            self._track_best(epoch, values.get("val/acc"), values.get("test/acc"))
            values["test/acc_max_seen"] = self.best["test_acc"]
            action = self._policy_epoch_ended(epoch, values, class_losses)
            if epoch < self.config.epochs:
                values.update(self._scheduled_metrics(epoch, final=False))
            values.update(self.data.stats())
            self.epoch_log.metrics(values)
            self.history.append({"epoch": epoch, **values})
            self._apply(action, epoch)
            self._checkpoint(epoch)
            self.epoch_log.flush(self.logged)
            plugins.notify("epoch_ended", run=self.view(), epoch=epoch, metrics=dict(values))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss/total']:.3f}", acc=f"{self.last_acc:.1f}")
        if bar is not None:
            bar.close()
        return self._finish()

    def _start(self) -> None:
        if self.epoch == 0:
            for _, metric in self.metrics:
                metric.start(self.metric_context("train", 0))
            self._init_stages()
        elif self.epoch_log.pending:  # a resumed run: log what the checkpoint committed but MLflow may lack
            self.epoch_log.flush(self.logged)
        plugins.notify("run_started", run=self.view())

    def _epoch_bar(self) -> Any:
        if not (self.config.train.progress and self.dist.is_main):
            return None
        from tqdm.auto import tqdm

        name = self.config.tracking.run_name or "train"
        return tqdm(total=self.config.epochs, initial=self.epoch, desc=name, unit="epoch")

    def _policy_epoch_ended(self, epoch: int, values: dict[str, float], class_losses: Tensor | None) -> EpochAction:
        report = EpochReport(
            epoch=epoch,
            log=self.epoch_log,
            val_accuracy=values.get("val/acc"),
            test_accuracy=values.get("test/acc"),
            class_losses=class_losses,
        )
        return self.policy.epoch_ended(report)

    def _apply(self, action: EpochAction, epoch: int) -> None:
        if action.restore_best:
            restored = self.checkpoints.restore_best(self.student, [t.method for t in self.teaching])
            if restored is not None:
                self.epoch_log.metrics({"policy/restored_best_epoch": restored})
        if action.reset_optimizer:
            self._new_optimizer(start_step=epoch * self.steps_per_epoch)

    def _checkpoint(self, epoch: int) -> None:
        """Epoch files first, then ``last.pt``, which commits the epoch (with its staged log values)."""
        cfg = self.config.checkpoint
        resumable = epoch % cfg.resume_every == 0 or epoch == self.config.epochs
        state = self.state_dict() if resumable else {}  # every process takes part in gathering it
        if not self.dist.is_main:
            return
        if cfg.every and epoch % cfg.every == 0:
            self.checkpoints.save_epoch(epoch, self.student.state_dict())
        if resumable:
            self.checkpoints.save_last(state)

    def _finish(self) -> RunResult:
        cfg = self.config
        self.epoch_log.at_step(cfg.epochs)
        final = self._scheduled_metrics(cfg.epochs, final=True)
        summary = {"test/acc_last": self.last_acc}
        if self.data.has("val"):  # the selected epoch is the best by validation, else the best by test
            summary["best_val_epoch"] = self.best["epoch"]
            summary["test/acc_at_best_val"] = self.best["test_at_selection"]
        else:
            summary["best_test_epoch"] = self.best["epoch"]
        repeated = {f"{split}/acc" for split in _ENGINE_ACCURACY_SPLITS}  # the last epoch logged them
        self.epoch_log.metrics({**{k: v for k, v in final.items() if k not in repeated}, **summary})
        self.epoch_log.flush(self.logged)
        if self.dist.is_main:
            self.checkpoints.save_final(cfg.epochs, self.student.state_dict())
        return RunResult(
            self.run_id,
            "FINISHED",
            self.best["test_acc"],
            self.last_acc,
            {**final, **summary, "test/acc_max_seen": self.best["test_acc"]},
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
            self.checkpoints.save_best(epoch, self.student.state_dict(), [t.method.state_dict() for t in self.teaching])

    def close(self) -> None:
        """Remove the feature hooks and the work folder (checkpoints and downloads)."""
        self.parts.student_recorder.remove()
        if self.parts.teacher_recorder is not None:
            self.parts.teacher_recorder.remove()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
