"""Evaluation: accuracy, metrics and a policy's per-class distillation losses on one split.

Both models run in eval mode without augmentation. The teacher's logits on a split are cached
after the first pass that needs no teacher features (they do not change: the teacher is frozen);
under torchrun each process evaluates every ``world_size``-th batch and the sums are all-reduced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from kdhub.contract.metric import Metric, MetricContext, MetricResult
from kdhub.contract.outputs import EvalBatch, StepOutputs
from kdhub.contract.policy import Policy
from kdhub.engine.data import DataSource
from kdhub.engine.distributed import DistEnv
from kdhub.engine.features import FeatureTaps
from kdhub.engine.heads import eval_logits
from kdhub.engine.losses import Teaching, sample_distillation_loss

__all__ = ["Evaluation", "Evaluator", "Tally"]


@dataclass
class Tally:
    """What one process accumulated over its batches of a split (before the sums across processes)."""

    correct: Tensor
    count: Tensor
    loss_sum: Tensor | None = None
    loss_count: Tensor | None = None

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.correct, self.count, self.loss_sum, self.loss_count) if t is not None]


@dataclass
class Evaluation:
    """Accuracy (%), the metrics' results (in the order asked), per-class losses (``[C]``, NaN: empty class)."""

    accuracy: float
    results: list[MetricResult] = field(default_factory=list)
    class_losses: Tensor | None = None


class Evaluator:
    """Evaluates a student (and teacher) on the splits of a :class:`DataSource`."""

    def __init__(
        self,
        *,
        data: DataSource,
        student: nn.Module,
        teacher: nn.Module | None,
        student_taps: dict[str, list[str]],
        teacher_taps: dict[str, list[str]],
        teaching: list[Teaching],
        policy: Policy | None,
        dist: DistEnv,
        device: torch.device,
        batch_size: int,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self.data, self.student, self.teacher = data, student, teacher
        self.student_taps, self.teacher_taps = student_taps, teacher_taps
        self.teaching, self.policy, self.dist = teaching, policy, dist
        self.device, self.batch_size, self.autocast = device, batch_size, autocast
        self.num_classes = data.num_classes
        self._teacher_cache: dict[str, Tensor] = {}

    def evaluate(
        self, split: str, metrics: list[Metric], ctx: MetricContext | None = None, class_losses: bool = False
    ) -> Evaluation:
        """Accuracy on ``split``, the results of ``metrics`` (reset with ``ctx``) and optional per-class losses."""
        tally = self.accumulate(split, metrics, ctx, class_losses)
        self.dist.all_reduce_(tally.tensors())
        for metric in metrics:
            self.dist.all_reduce_(list(metric.accumulators().values()))
        return self.finish(tally, metrics)

    @torch.no_grad()
    def accumulate(
        self, split: str, metrics: list[Metric], ctx: MetricContext | None = None, class_losses: bool = False
    ) -> Tally:
        """This process's pass over its batches of ``split``: metric updates and the sums behind accuracy and losses."""
        was_training = self.student.training
        self.student.eval()
        for t in self.teaching:
            t.method.eval()
        for metric in metrics:
            if ctx is None:
                raise ValueError("metrics need a MetricContext")
            metric.reset(ctx)
        roles = {r for m in metrics for r in m.feature_roles}
        if class_losses:
            roles |= {r for t in self.teaching for r in t.method.feature_roles}
        device = self.device
        tally = Tally(
            torch.zeros((), device=device, dtype=torch.float64), torch.zeros((), device=device, dtype=torch.float64)
        )
        if class_losses:
            tally.loss_sum = torch.zeros(self.num_classes, device=device, dtype=torch.float64)
            tally.loss_count = torch.zeros(self.num_classes, device=device, dtype=torch.float64)
        cache = self._teacher_cache.get(split)
        run_teacher = self.teacher is not None and (bool(roles) or cache is None)
        fresh: list[Tensor] = []
        try:
            with FeatureTaps(self.student, self.student_taps, roles) as s_rec, contextlib.ExitStack() as stack:
                t_rec = None
                if self.teacher is not None:
                    t_rec = stack.enter_context(FeatureTaps(self.teacher, self.teacher_taps, roles))
                offset = 0
                for x, y, idx in self.data.eval_batches(split, self.batch_size):
                    with self.autocast():
                        s_logits = eval_logits(self.student(x)).float()  # several heads: their mean (DeiT)
                        t_logits = (
                            eval_logits(self.teacher(x)).float() if run_teacher and self.teacher is not None else None
                        )
                    if self.teacher is not None and t_logits is None and cache is not None:
                        t_logits = cache[offset : offset + len(y)]
                    elif t_logits is not None:
                        fresh.append(t_logits)
                    offset += len(y)
                    batch = EvalBatch(
                        student_logits=s_logits,
                        teacher_logits=cast(Tensor, t_logits),  # None without a teacher
                        labels=y,
                        indices=idx,
                        student_features=s_rec.collect(),
                        teacher_features=t_rec.collect() if t_rec is not None else {},
                    )
                    tally.correct += (s_logits.argmax(1) == y).sum()
                    tally.count += y.numel()
                    for metric in metrics:
                        metric.update(batch)
                    if class_losses:
                        self._add_class_losses(tally, batch)
        finally:
            self.student.train(was_training)
        if self.teacher is not None and cache is None and fresh and not roles:
            self._teacher_cache[split] = torch.cat(fresh)
        return tally

    def _add_class_losses(self, tally: Tally, batch: EvalBatch) -> None:
        assert self.policy is not None
        assert tally.loss_sum is not None
        assert tally.loss_count is not None
        out = StepOutputs(
            student_logits=batch.student_logits,
            teacher_logits=batch.teacher_logits,
            labels=batch.labels,
            indices=batch.indices,
            student_features=batch.student_features,
            teacher_features=batch.teacher_features,
        )
        with self.autocast():  # methods' own layers in the forward's precision
            losses = self.policy.sample_losses(out, sample_distillation_loss(self.teaching, out))
        if losses is not None:
            tally.loss_sum.index_add_(0, batch.labels, losses.double())
            tally.loss_count.index_add_(0, batch.labels, torch.ones_like(losses, dtype=torch.float64))

    @staticmethod
    def finish(tally: Tally, metrics: list[Metric]) -> Evaluation:
        """The evaluation from summed tallies and accumulators (one host sync for the accuracy)."""
        correct, count = torch.stack([tally.correct, tally.count]).tolist()
        per_class = None
        if tally.loss_sum is not None and tally.loss_count is not None:
            per_class = (tally.loss_sum / tally.loss_count).cpu()  # 0/0 -> NaN for an empty class
        return Evaluation(100 * correct / max(1.0, count), [m.compute() for m in metrics], per_class)
