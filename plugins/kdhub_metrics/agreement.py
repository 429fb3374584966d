"""Prediction agreement between student and teacher (overall, per class, top-k) and the KD error."""

from __future__ import annotations

import math

import torch
from pydantic import Field

import kdhub
from kdhub.contract.figures import new_figure
from kdhub.contract.functional import nanmean

from ._support import add_at

PERCENT = 100.0
"""Agreements are percentages, as accuracies are."""


class Agreement(kdhub.Metric):
    """Top-1 prediction agreement PA between student and teacher, per class and top-k; KD error = 100 - PA.

    Papers: Zhu et al., "Teach Less, Learn More: On the Undistillable Classes in Knowledge
    Distillation", NeurIPS 2022 (average prediction agreement per class, ΔPA); Cho & Hariharan,
    "On the Efficacy of Knowledge Distillation", ICCV 2019 (KD error).

    ``PA = (100/n) sum_i 1[argmax z_t,i = argmax z_s,i]`` in percent, the scale of the accuracies
    (papers report both in %; ``(acc − pa)`` and ΔPA beside ΔACC need no conversion). Per class ``m``:
    ``pa_by_label[m]`` over the samples with ``y_i = m`` and ``pa_by_teacher[m]`` over the samples
    the teacher predicts as ``m`` (NaN for an empty class, left out of means). Top-k agreement
    ``pa_top<k>``: the teacher's top-1 class is among the student's ``k`` largest logits
    (``k = min(top_k, C)``). ``kd_error = 100 - PA``. All in percent.

    Logs the scalars ``pa``, ``kd_error``, ``pa_top<k>``, ``mean_class_pa``, ``worst_class_pa``,
    and the table ``agreement`` (class, name, count, pa_by_label, pa_by_teacher, teacher_count)
    that comparisons read (ΔPA_m = PA_m(run) - PA_m(baseline)). The figure ``agreement`` shows
    PA per class by true label (bars) and by teacher prediction (dots); low bars mark the
    classes on which the student deviates from its teacher.

    Config::

        metrics: [{name: agreement, split: test, options: {top_k: 5}}]
    """

    name = "agreement"
    tables = (kdhub.AGREEMENT,)
    columns = ("pa",)
    needs_teacher = True

    class Options(kdhub.Options):
        top_k: int = Field(5, ge=1, le=1000, description="k of the top-k agreement (capped at the class count)")

    options: Options

    def reset(self, ctx: kdhub.MetricContext) -> None:
        super().reset(ctx)
        c = ctx.num_classes
        self.k = min(self.options.top_k, c)
        zero = torch.zeros(c, dtype=torch.float64, device=ctx.device)
        self.label_counts, self.label_agree, self.teacher_counts, self.teacher_agree = (zero.clone() for _ in range(4))
        self.topk_agree = torch.zeros((), dtype=torch.float64, device=ctx.device)

    def update(self, batch: kdhub.EvalBatch) -> None:
        if batch.teacher_logits is None:
            raise kdhub.IncompatibleError("agreement needs a teacher")
        t_pred = batch.teacher_logits.argmax(1)
        s_top = batch.student_logits.topk(self.k, dim=1).indices
        hits = s_top == t_pred[:, None]
        agree = hits[:, 0].double()
        add_at(self.label_counts, batch.labels)
        add_at(self.label_agree, batch.labels, agree)
        add_at(self.teacher_counts, t_pred)
        add_at(self.teacher_agree, t_pred, agree)
        self.topk_agree += hits.any(dim=1).sum()

    def accumulators(self) -> dict[str, torch.Tensor]:
        return {
            "label_counts": self.label_counts,
            "label_agree": self.label_agree,
            "teacher_counts": self.teacher_counts,
            "teacher_agree": self.teacher_agree,
            "topk_agree": self.topk_agree,
        }

    def compute(self) -> kdhub.MetricResult:
        counts = self.label_counts.cpu()
        n = counts.sum().item()
        if n == 0:
            return kdhub.MetricResult()
        pa = PERCENT * self.label_agree.sum().item() / n
        by_label = (PERCENT * self.label_agree.cpu() / counts).tolist()  # 0/0 -> NaN
        by_teacher = (PERCENT * self.teacher_agree.cpu() / self.teacher_counts.cpu()).tolist()
        table: kdhub.Table = {
            "class": list(range(self.ctx.num_classes)),
            "name": list(self.ctx.class_names),
            "count": [int(x) for x in counts.tolist()],
            "pa_by_label": by_label,
            "pa_by_teacher": by_teacher,
            "teacher_count": [int(x) for x in self.teacher_counts.cpu().tolist()],
        }
        kept = [v for v in by_label if not math.isnan(v)]
        scalars = {
            "pa": pa,
            "kd_error": PERCENT - pa,
            f"pa_top{self.k}": PERCENT * self.topk_agree.item() / n,
            "mean_class_pa": nanmean(by_label),
            "worst_class_pa": min(kept) if kept else float("nan"),
        }
        return kdhub.MetricResult(
            scalars=scalars, tables={kdhub.AGREEMENT.name: table}, figures={"agreement": _figure(table)}
        )


def _figure(table: kdhub.Table):
    n = len(table["class"])
    fig, (ax,) = new_figure(width=max(6.0, 0.25 * n + 2), height=3.5)
    xs = list(range(n))
    ax.bar(xs, table["pa_by_label"], 0.8, label="by true label")
    ax.plot(xs, table["pa_by_teacher"], "o", color="C1", markersize=3, label="by teacher prediction")
    ax.set_xlabel("class")
    ax.set_ylabel("prediction agreement (%)")
    ax.set_ylim(0, 105)
    if n <= 20:
        ax.set_xticks(xs, table["name"], rotation=45, ha="right")
    ax.legend(loc="lower right")
    return fig
