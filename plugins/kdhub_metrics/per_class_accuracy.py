"""Per-class top-1 accuracy of the student and the teacher."""

from __future__ import annotations

import math

import torch

import kdhub
from kdhub.contract.figures import new_figure
from kdhub.contract.functional import nanmean, nanmin


class PerClassAccuracy(kdhub.Metric):
    """Per-class accuracy ``acc_m = |{i : y_i = m, yhat_i = m}| / |{i : y_i = m}|`` (%).

    Logged as the table ``per_class_accuracy`` (class, name, count, student, teacher) that
    comparisons (ΔACC, undistillable classes) read from MLflow; an empty class is NaN (kept in
    the table, left out of the mean). Also logs the mean over classes and a bar figure::

        metrics: [{name: per_class_accuracy, split: test}]
    """

    name = "per_class_accuracy"
    tables = (kdhub.PER_CLASS_ACCURACY,)

    def reset(self, ctx: kdhub.MetricContext) -> None:
        super().reset(ctx)
        c = ctx.num_classes
        self.counts = torch.zeros(c, dtype=torch.float64, device=ctx.device)
        self.student_correct = torch.zeros(c, dtype=torch.float64, device=ctx.device)
        self.teacher_correct = torch.zeros(c, dtype=torch.float64, device=ctx.device)

    def update(self, batch: kdhub.EvalBatch) -> None:
        c = self.ctx.num_classes
        y = batch.labels
        self.counts += torch.bincount(y, minlength=c)
        self.student_correct += torch.bincount(y, weights=(batch.student_logits.argmax(1) == y).double(), minlength=c)
        if batch.teacher_logits is not None:
            hits = (batch.teacher_logits.argmax(1) == y).double()
            self.teacher_correct += torch.bincount(y, weights=hits, minlength=c)

    def accumulators(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts, "student": self.student_correct, "teacher": self.teacher_correct}

    def compute(self) -> kdhub.MetricResult:
        counts = self.counts.cpu()
        student = (100 * self.student_correct.cpu() / counts).tolist()  # 0/0 -> NaN
        table: kdhub.Table = {
            "class": list(range(self.ctx.num_classes)),
            "name": list(self.ctx.class_names),
            "count": [int(n) for n in counts.tolist()],
            "student": student,
        }
        scalars = {"mean_class_acc": nanmean(student), "worst_class_acc": nanmin(student)}
        if self.ctx.has_teacher:
            table["teacher"] = (100 * self.teacher_correct.cpu() / counts).tolist()
            scalars["teacher_mean_class_acc"] = nanmean(table["teacher"])
        return kdhub.MetricResult(
            scalars=scalars,
            tables={kdhub.PER_CLASS_ACCURACY.name: table},
            figures={"per_class_accuracy": _figure(table)},
        )


def _figure(table: kdhub.Table):
    """Student (and teacher) bars per class; the y axis starts below the worst class so differences show."""
    n = len(table["class"])
    has_teacher = "teacher" in table
    fig, (ax,) = new_figure(width=min(16.0, max(8.0, 0.32 * n + 3)), height=4.5)
    xs = list(range(n))
    width = 0.4 if has_teacher else 0.8
    series = [("student", -width / 2 if has_teacher else 0.0, "C0")]
    if has_teacher:
        series.append(("teacher", width / 2, "C1"))
    finite = [v for key, _, _ in series for v in table[key] if not math.isnan(v)]
    for key, shift, color in series:
        values = table[key]
        label = f"{key} (mean {nanmean(values):.1f} %)"
        ax.bar([x + shift for x in xs], [0 if math.isnan(v) else v for v in values], width, label=label, color=color)
    low = max(0.0, 10 * math.floor((min(finite) - 5) / 10)) if finite else 0.0
    ax.set_ylim(low, 100.5)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy (%)")
    if n <= 40:
        ax.set_xticks(xs, table["name"], rotation=45 if n > 10 else 0, ha="right" if n > 10 else "center")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"per-class accuracy ({n} classes; y axis from {low:.0f} %)", loc="left", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
    return fig
