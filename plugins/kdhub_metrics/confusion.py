"""Confusion matrices of student and teacher: where each class's samples went."""

from __future__ import annotations

import math

import torch
from pydantic import Field

import kdhub
from kdhub.contract.figures import new_figure

from ._support import add_at


class Confusion(kdhub.Metric):
    """Per-class confusion matrix ``N[m, k] = |{i : y_i = m, yhat_i = k}|`` of the student (and teacher).

    No paper of its own: it answers the question a per-class comparison raises (Zhu et al. 2022,
    undistillable classes) — when distillation hurts class ``m``, which classes took its samples?
    Rows are true classes, columns predicted classes; counts are summed over samples (and across
    processes), so they do not depend on the batching. ``acc_m = N[m, m] / sum_k N[m, k]``.

    Logged: the table ``confusion`` (class, name, count, then one column per predicted class
    ``"0"``, ``"1"``, ... holding counts; plus ``top_confusion``, the class that takes most of
    class ``m``'s misclassified samples, and ``top_confusion_pct``, its share of class ``m`` in %),
    and ``confusion_teacher`` likewise with a teacher; the scalars ``acc`` (%),
    ``max_confusion_pct`` (the largest share of a class sent to one other class, %) and their
    ``teacher_*`` twins; the figure ``confusion`` (rows normalised to % of the true class, student
    and teacher side by side). Compare two runs' rows of a hurt class to see where its samples went.

    Config::

        metrics: [{name: confusion, split: test, options: {annotate: true}}]
    """

    name = "confusion"

    class Options(kdhub.Options):
        annotate: bool = Field(True, description="write the percentages in the figure's cells (up to 20 classes)")

    options: Options

    def reset(self, ctx: kdhub.MetricContext) -> None:
        super().reset(ctx)
        c = ctx.num_classes
        self.student = torch.zeros(c * c, dtype=torch.float64, device=ctx.device)
        self.teacher = torch.zeros(c * c, dtype=torch.float64, device=ctx.device) if ctx.has_teacher else None

    def update(self, batch: kdhub.EvalBatch) -> None:
        c = self.ctx.num_classes
        add_at(self.student, batch.labels * c + batch.student_logits.argmax(1))
        if self.teacher is not None and batch.teacher_logits is not None:
            add_at(self.teacher, batch.labels * c + batch.teacher_logits.argmax(1))

    def accumulators(self) -> dict[str, torch.Tensor]:
        out = {"student": self.student}
        if self.teacher is not None:
            out["teacher"] = self.teacher
        return out

    def matrix(self, who: str = "student") -> torch.Tensor:
        """The ``[C, C]`` count matrix (rows: true class, columns: predicted class) on the CPU."""
        c = self.ctx.num_classes
        flat = self.student if who == "student" else self.teacher
        if flat is None:
            raise kdhub.KdhubError("confusion: no teacher in this evaluation")
        return flat.cpu().reshape(c, c)

    def compute(self) -> kdhub.MetricResult:
        scalars: dict[str, float] = {}
        tables: dict[str, kdhub.Table] = {}
        matrices = {"student": self.matrix("student")}
        if self.teacher is not None:
            matrices["teacher"] = self.matrix("teacher")
        for who, matrix in matrices.items():
            table, acc, worst = _table(matrix, self.ctx.class_names)
            prefix = "" if who == "student" else "teacher_"
            tables["confusion" if who == "student" else "confusion_teacher"] = table
            scalars[f"{prefix}acc"] = acc
            scalars[f"{prefix}max_confusion_pct"] = worst
        return kdhub.MetricResult(
            scalars=scalars, tables=tables, figures={"confusion": _figure(matrices, self.ctx, self.options.annotate)}
        )


def _table(matrix: torch.Tensor, names: list[str]) -> tuple[kdhub.Table, float, float]:
    c = matrix.shape[0]
    counts = matrix.sum(dim=1)
    off = matrix.clone()
    off.fill_diagonal_(-1.0)  # never the class itself
    top = off.argmax(dim=1)
    share = [
        100 * matrix[m, top[m]].item() / counts[m].item() if counts[m] > 0 and matrix[m, top[m]] > 0 else math.nan
        for m in range(c)
    ]
    table: kdhub.Table = {
        "class": list(range(c)),
        "name": list(names),
        "count": [int(v) for v in counts.tolist()],
    }
    for k in range(c):
        table[str(k)] = [int(v) for v in matrix[:, k].tolist()]
    table["top_confusion"] = [int(top[m]) if math.isfinite(share[m]) else -1 for m in range(c)]
    table["top_confusion_pct"] = share
    total = counts.sum().item()
    acc = 100 * matrix.diagonal().sum().item() / total if total > 0 else math.nan
    kept = [v for v in share if math.isfinite(v)]
    return table, acc, max(kept) if kept else (0.0 if total > 0 else math.nan)


def _figure(matrices: dict[str, torch.Tensor], ctx: kdhub.MetricContext, annotate: bool):
    c = ctx.num_classes
    size = max(3.5, min(12.0, 0.35 * c + 2))
    fig, axes = new_figure(width=size + 0.8, height=size, ncols=len(matrices))
    for ax, (who, matrix) in zip(axes, matrices.items(), strict=True):
        rows = matrix.sum(dim=1, keepdim=True)
        pct = (100 * matrix / rows.clamp(min=1)).numpy()
        image = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
        ax.set_title(f"{who}: % of each true class", fontsize=9)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if c <= 20:
            names = [str(n)[:12] for n in ctx.class_names[:c]]
            ax.set_xticks(range(c), names, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(c), names, fontsize=7)
            if annotate:
                for m in range(c):
                    for k in range(c):
                        if pct[m, k] >= 0.5:
                            color = "white" if pct[m, k] > 60 else "black"
                            ax.text(k, m, f"{pct[m, k]:.0f}", ha="center", va="center", fontsize=6, color=color)
        fig.colorbar(image, ax=ax, shrink=0.8)
    return fig
