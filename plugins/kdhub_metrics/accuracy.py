"""Top-1 and top-k accuracy of the student (and of the teacher when there is one)."""

from __future__ import annotations

import torch
from pydantic import Field

import kdhub


class Accuracy(kdhub.Metric):
    """Top-1 and top-k accuracy (%) of the student and, when present, the teacher.

    ``acc@k = 100 * |{i : y_i in top-k(z_i)}| / n``::

        metrics: [{name: accuracy, split: test, options: {top_k: 5}}]
    """

    name = "accuracy"

    class Options(kdhub.Options):
        top_k: int = Field(5, ge=1, le=1000, description="k of the top-k accuracy (capped at the class count)")

    options: Options

    def reset(self, ctx: kdhub.MetricContext) -> None:
        super().reset(ctx)
        self.k = min(self.options.top_k, ctx.num_classes)
        self.sums = torch.zeros(5, dtype=torch.float64, device=ctx.device)  # n, s@1, s@k, t@1, t@k

    def update(self, batch: kdhub.EvalBatch) -> None:
        self.sums[0] += batch.labels.numel()
        for offset, logits in ((1, batch.student_logits), (3, batch.teacher_logits)):
            if logits is None:
                continue
            topk = logits.topk(self.k, dim=1).indices
            hits = topk == batch.labels[:, None]
            self.sums[offset] += hits[:, 0].sum()
            self.sums[offset + 1] += hits.any(dim=1).sum()

    def accumulators(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums}

    def compute(self) -> kdhub.MetricResult:
        n, s1, sk, t1, tk = self.sums.tolist()
        if n == 0:
            return kdhub.MetricResult()
        scalars = {"acc": 100 * s1 / n, f"acc_top{self.k}": 100 * sk / n}
        if self.ctx.has_teacher:
            scalars.update({"teacher_acc": 100 * t1 / n, f"teacher_acc_top{self.k}": 100 * tk / n})
        return kdhub.MetricResult(scalars=scalars)
