"""Train-set accuracy of teacher and student: does the teacher interpolate its training data?"""

from __future__ import annotations

import warnings

import torch
from pydantic import Field

import kdhub


class Interpolation(kdhub.Metric):
    """Train-set top-1 accuracy of the teacher and the student, and whether each interpolates.

    Paper: V. Nagarajan, A. K. Menon, S. Bhojanapalli, H. Mobahi, S. Kumar, "On student-teacher
    deviations in distillation: does it pay to disobey?", NeurIPS 2023. They tie the value of
    switching from distillation to one-hot labels late in training (the ``loss_switch`` policy) to
    whether the teacher interpolates: switching helps when the teacher does *not* fit its
    training data (Tiny-ImageNet, ImageNet) and hurts when it does (CIFAR-100).

    ``train_acc = 100 * |{i : argmax z_i = y_i}| / n`` on the training set evaluated without
    augmentation (``split: train``); ``<who>_interpolates = 1.0`` when ``train_acc >= threshold``
    (else 0.0). Scalars ``student_train_acc``, ``student_interpolates``, ``teacher_train_acc``,
    ``teacher_interpolates`` (teacher ones only with a teacher). On another split the values are
    that split's accuracies (a warning says so).

    Config::

        metrics: [{name: interpolation, split: train, options: {threshold: 99.0}}]
    """

    name = "interpolation"

    class Options(kdhub.Options):
        threshold: kdhub.FiniteFloat = Field(
            99.0, ge=0, le=100, description="train accuracy (%) at or above which a model is said to interpolate"
        )

    options: Options

    def reset(self, ctx: kdhub.MetricContext) -> None:
        super().reset(ctx)
        if ctx.split != "train":
            warnings.warn(
                f"interpolation is meant for split: train, got {ctx.split!r}; its values are {ctx.split} accuracies",
                stacklevel=2,
            )
        self.sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # n, student hits, teacher hits

    def update(self, batch: kdhub.EvalBatch) -> None:
        self.sums[0] += batch.labels.numel()
        self.sums[1] += (batch.student_logits.argmax(1) == batch.labels).sum()
        if batch.teacher_logits is not None:
            self.sums[2] += (batch.teacher_logits.argmax(1) == batch.labels).sum()

    def accumulators(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums}

    def compute(self) -> kdhub.MetricResult:
        n, student, teacher = self.sums.tolist()
        if n == 0:
            return kdhub.MetricResult()
        scalars = {}
        sides = [("student", student)] + ([("teacher", teacher)] if self.ctx.has_teacher else [])
        for who, hits in sides:
            acc = 100 * hits / n
            scalars[f"{who}_train_acc"] = acc
            scalars[f"{who}_interpolates"] = float(acc >= self.options.threshold)
        return kdhub.MetricResult(scalars=scalars)
