"""Expected calibration error (ECE) of the student and the teacher, with reliability diagrams."""

from __future__ import annotations

import torch
from pydantic import Field

import kdhub
from kdhub.contract.figures import new_figure

from ._support import add_at


def bin_index(confidence: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-width bin of each confidence in [0, 1]: bin b holds ``b/bins < c <= (b+1)/bins`` (c = 0 -> bin 0)."""
    return (torch.ceil(confidence.double() * bins).long() - 1).clamp(0, bins - 1)


def expected_calibration_error(counts: torch.Tensor, conf_sums: torch.Tensor, correct_sums: torch.Tensor) -> float:
    """``ECE = sum_b (n_b / n) |acc_b - conf_b| = (1/n) sum_b |correct_b - conf_b|`` from per-bin sums."""
    n = counts.sum().item()
    if n == 0:
        return float("nan")
    return (correct_sums.double() - conf_sums.double()).abs().sum().item() / n


class Calibration(kdhub.Metric):
    """Expected calibration error (ECE) with equal-width confidence bins, for the student and the teacher.

    Paper: C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, "On Calibration of Modern Neural Networks",
    ICML 2017 (15 bins).

    Confidence ``c_i = max_k softmax(z_i)_k`` (T = 1), correctness ``1[argmax z_i = y_i]``. Bin
    ``b`` (of ``bins`` equal-width bins over [0, 1]) holds ``b/bins < c <= (b+1)/bins``.
    ``ECE = sum_b (n_b / n) |acc_b - conf_b|`` as a fraction in [0, 1]; bins accumulate counts and
    sums, so the value does not depend on batching or the number of processes.

    Scalars ``ece`` (student) and ``teacher_ece``; table ``calibration`` (per bin: lower, upper,
    count, confidence, accuracy, and the teacher's); figure ``calibration``: reliability diagrams
    -- accuracy per bin (bars) against the diagonal; bars below it mean over-confidence.

    Config::

        metrics: [{name: calibration, split: test, options: {bins: 15}}]
    """

    name = "calibration"

    class Options(kdhub.Options):
        bins: int = Field(15, ge=1, le=1000, description="number of equal-width confidence bins")

    options: Options

    def reset(self, ctx: kdhub.MetricContext) -> None:
        super().reset(ctx)
        # rows: student count, confidence, correct; teacher count, confidence, correct
        self.sums = torch.zeros(6, self.options.bins, dtype=torch.float64, device=ctx.device)

    def update(self, batch: kdhub.EvalBatch) -> None:
        bins = self.options.bins
        for row, logits in ((0, batch.student_logits), (3, batch.teacher_logits)):
            if logits is None:
                continue
            conf, pred = torch.softmax(logits.double(), dim=1).max(dim=1)
            b = bin_index(conf, bins)
            add_at(self.sums[row], b)
            add_at(self.sums[row + 1], b, conf)
            add_at(self.sums[row + 2], b, pred == batch.labels)

    def accumulators(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums}

    def compute(self) -> kdhub.MetricResult:
        sums = self.sums.cpu()
        if sums[0].sum().item() == 0:
            return kdhub.MetricResult()
        bins = self.options.bins
        table: kdhub.Table = {
            "lower": [b / bins for b in range(bins)],
            "upper": [(b + 1) / bins for b in range(bins)],
        }
        scalars = {}
        sides = [("", 0)] + ([("teacher_", 3)] if self.ctx.has_teacher and sums[3].sum().item() > 0 else [])
        for prefix, row in sides:
            count, conf, correct = sums[row], sums[row + 1], sums[row + 2]
            scalars[f"{prefix}ece"] = expected_calibration_error(count, conf, correct)
            table[f"{prefix}count"] = [int(x) for x in count.tolist()]
            table[f"{prefix}confidence"] = (conf / count).tolist()  # empty bin -> NaN
            table[f"{prefix}accuracy"] = (correct / count).tolist()
        return kdhub.MetricResult(
            scalars=scalars, tables={"calibration": table}, figures={"calibration": _figure(table, scalars)}
        )


def _figure(table: kdhub.Table, scalars: dict[str, float]):
    sides = [p for p in ("", "teacher_") if f"{p}ece" in scalars]
    fig, axes = new_figure(ncols=len(sides), width=4.0, height=4.0)
    width = table["upper"][0] - table["lower"][0]
    for ax, prefix in zip(axes, sides, strict=True):
        acc = [0.0 if a != a else a for a in table[f"{prefix}accuracy"]]
        ax.bar(table["lower"], acc, width, align="edge", edgecolor="black", label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        who = "teacher" if prefix else "student"
        ax.set_title(f"{who}: ECE = {scalars[f'{prefix}ece']:.4f}")
        ax.legend(loc="lower right")
    return fig
