"""Fidelity of the student to its teacher: average predictive KL and top-1 agreement."""

from __future__ import annotations

import torch

import kdhub
from kdhub.contract.figures import new_figure
from kdhub.contract.functional import kl_per_sample

from ._support import add_at


def predictive_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(z_t) || softmax(z_s))`` per sample at T = 1, in float64."""
    return kl_per_sample(student_logits, teacher_logits, 1.0, dtype=torch.float64)


class Fidelity(kdhub.Metric):
    """How closely the student matches its teacher: average predictive KL at T = 1 and top-1 agreement.

    Paper: S. Stanton, P. Izmailov, P. Kirichenko, A. Alemi, A. G. Wilson, "Does Knowledge
    Distillation Really Work?", NeurIPS 2021 (their gnosis code).

    ``kl = (1/n) sum_i KL(softmax(z_t,i) || softmax(z_s,i))`` at T = 1 whatever the training
    temperature, computed from log-softmax on both sides; ``agreement = (1/n) sum_i
    1[argmax z_t,i = argmax z_s,i]`` in percent (the scale of the accuracies and of the
    ``agreement`` metric). Both are sums over samples divided by n at the end, so a partial last
    batch weighs what its samples weigh (averaging per-batch means would not). 0 KL and agreement
    100 mean a perfectly faithful student.

    The table ``fidelity`` (class, name, count, kl, agreement) splits both by true label; the
    figure ``fidelity`` draws the per-class KL (bars): tall bars are the classes the student
    imitates worst.

    Config::

        metrics: [{name: fidelity, split: test}]
    """

    name = "fidelity"
    needs_teacher = True

    def reset(self, ctx: kdhub.MetricContext) -> None:
        super().reset(ctx)
        zero = torch.zeros(ctx.num_classes, dtype=torch.float64, device=ctx.device)
        self.counts, self.kl_sums, self.agree = (zero.clone() for _ in range(3))

    def update(self, batch: kdhub.EvalBatch) -> None:
        if batch.teacher_logits is None:
            raise kdhub.IncompatibleError("fidelity needs a teacher")
        kl = predictive_kl(batch.student_logits, batch.teacher_logits)
        agree = batch.student_logits.argmax(1) == batch.teacher_logits.argmax(1)
        add_at(self.counts, batch.labels)
        add_at(self.kl_sums, batch.labels, kl)
        add_at(self.agree, batch.labels, agree)

    def accumulators(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts, "kl_sums": self.kl_sums, "agree": self.agree}

    def compute(self) -> kdhub.MetricResult:
        counts = self.counts.cpu()
        n = counts.sum().item()
        if n == 0:
            return kdhub.MetricResult()
        kl, agree = self.kl_sums.cpu(), self.agree.cpu()
        table: kdhub.Table = {
            "class": list(range(self.ctx.num_classes)),
            "name": list(self.ctx.class_names),
            "count": [int(x) for x in counts.tolist()],
            "kl": (kl / counts).tolist(),  # 0/0 -> NaN
            "agreement": (100.0 * agree / counts).tolist(),
        }
        scalars = {"kl": kl.sum().item() / n, "agreement": 100.0 * agree.sum().item() / n}
        return kdhub.MetricResult(scalars=scalars, tables={"fidelity": table}, figures={"fidelity": _figure(table)})


def _figure(table: kdhub.Table):
    n = len(table["class"])
    fig, (ax,) = new_figure(width=max(6.0, 0.25 * n + 2), height=3.5)
    xs = list(range(n))
    ax.bar(xs, table["kl"], 0.8)
    ax.set_xlabel("class")
    ax.set_ylabel("KL(teacher || student), T = 1")
    if n <= 20:
        ax.set_xticks(xs, table["name"], rotation=45, ha="right")
    return fig
