"""Per-class top-1 accuracy of the student and the teacher."""

from __future__ import annotations

import torch

import kdhub
from kdhub.figures import new_figure
from kdhub.functional import nanmean, nanmin


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
    n = len(table["class"])
    fig, (ax,) = new_figure(width=max(6, 0.25 * n + 2), height=3.5)
    xs = list(range(n))
    width = 0.4 if "teacher" in table else 0.8
    ax.bar([x - width / 2 if "teacher" in table else x for x in xs], table["student"], width, label="student")
    if "teacher" in table:
        ax.bar([x + width / 2 for x in xs], table["teacher"], width, label="teacher", alpha=0.7)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy (%)")
    if n <= 20:
        ax.set_xticks(xs, table["name"], rotation=45, ha="right")
    ax.set_ylim(0, 100)
    ax.set_title("per-class accuracy", loc="left")
    ax.legend(loc="lower left", bbox_to_anchor=(1.0, 0.0), frameon=False)
    return fig
