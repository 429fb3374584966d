"""Confidence exaggeration: the student's vs the teacher's logit-transformed top-class probability."""

from __future__ import annotations

import torch
from pydantic import Field

import kdhub
from kdhub.contract.figures import new_figure

from ._support import SampleBuffer, fit_line


def logit_confidence(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``phi_k = z_k - logsumexp_{j != k} z_j`` per sample (= log(p_k / (1 - p_k)) at T = 1), in float64."""
    z = logits.double()
    others = z.scatter(1, k[:, None], float("-inf"))
    return z.gather(1, k[:, None]).squeeze(1) - others.logsumexp(dim=1)


def quantile_bin_means(u: torch.Tensor, v: torch.Tensor, bins: int) -> tuple[list[float], list[float]]:
    """Means of u and v in ``bins`` equal-count bins of u (sorted by u)."""
    order = torch.argsort(u, stable=True)
    chunks = [c for c in torch.tensor_split(order, min(bins, max(u.numel(), 1))) if c.numel()]
    return [u[c].mean().item() for c in chunks], [v[c].mean().item() for c in chunks]


class Confidence(kdhub.Metric):
    """Confidence exaggeration: scatter and OLS fit of the student's vs the teacher's top-class logit-confidence.

    Paper: V. Nagarajan, A. K. Menon, S. Bhojanapalli, H. Mobahi, S. Kumar, "On student-teacher
    deviations in distillation: does it pay to disobey?", NeurIPS 2023.

    For each sample, ``k = argmax z_t`` (the teacher's top class) and the logit-transformed
    probability of class k, ``phi_k(z) = z_k - logsumexp_{j != k} z_j = log(p_k / (1 - p_k))`` at
    T = 1, computed stably from logits: ``u = phi_k(z_t)`` (teacher), ``v = phi_k(z_s)`` (student).
    An OLS fit ``v = b u + a`` (slope ``b = cov(u, v) / var(u)``, with intercept), Pearson r and n
    are reported over all samples (``slope``, ``intercept``, ``r``, ``n``) and over the samples
    with the teacher's lowest and highest ``q``% of u (``low_*``, ``high_*``; the lowest
    ``round(q n / 100)`` after a stable sort). NaN when n < 2 or var(u) = 0. On the low part,
    ``low_slope > 1`` means the student exaggerates the teacher's low confidence. Evaluate the
    train and the test split separately (two entries).

    Memory is bounded: (u, v) are kept for a fixed-seed random subsample of at most
    ``max_samples`` samples (the scalar ``n`` counts what was kept), in summable slots.

    Figure ``confidence``: u (x) vs v (y) for up to ``plot_points`` samples, the line y = x, and
    the means of ``bins`` quantile bins of u (the curve). A curve steeper than y = x (slope > 1)
    is exaggeration: the student is less confident than the teacher where the teacher is unsure
    (below the line on the left) and more confident where it is sure (above it on the right).
    Table ``confidence_bins``: the bin means.

    Config::

        metrics:
          - {name: confidence, split: train}
          - {name: confidence, split: test, options: {q: 25, bins: 20}}
    """

    name = "confidence"
    needs_teacher = True

    class Options(kdhub.Options):
        q: kdhub.FiniteFloat = Field(
            25.0, gt=0, le=50, description="percent of samples in the teacher's lowest / highest part"
        )
        bins: int = Field(20, ge=1, le=1000, description="quantile bins of u whose means are drawn")
        max_samples: int = Field(
            100_000, ge=2, le=10_000_000, description="at most this many samples (fixed-seed subsample) are kept"
        )
        plot_points: int = Field(5000, ge=0, le=1_000_000, description="points drawn in the scatter (a subsample)")
        seed: int = Field(
            0, ge=0, le=2**32 - 1, description="seed of the subsample (fixed, so runs compare on the same samples)"
        )

    options: Options

    def reset(self, ctx: kdhub.MetricContext) -> None:
        super().reset(ctx)
        self.buffer = SampleBuffer.random(ctx.num_samples, self.options.max_samples, self.options.seed, ctx.device)
        self.buffer.allocate("uv", (2,), torch.float64)

    def update(self, batch: kdhub.EvalBatch) -> None:
        if batch.teacher_logits is None:
            raise kdhub.IncompatibleError("confidence needs a teacher")
        k = batch.teacher_logits.argmax(1)
        u = logit_confidence(batch.teacher_logits, k)
        v = logit_confidence(batch.student_logits, k)
        self.buffer.add(batch.indices, uv=torch.stack([u, v], dim=1))

    def accumulators(self) -> dict[str, torch.Tensor]:
        return self.buffer.accumulators()

    def compute(self) -> kdhub.MetricResult:
        _, values = self.buffer.collect()
        u, v = values["uv"].double().cpu().unbind(1)
        n = u.numel()
        if n == 0:
            return kdhub.MetricResult()
        scalars = dict(fit_line(u, v))
        order = torch.argsort(u, stable=True)
        m = round(self.options.q * n / 100)
        for prefix, part in (("low_", order[:m]), ("high_", order[n - m :] if m else order[:0])):
            scalars.update({prefix + key: value for key, value in fit_line(u[part], v[part]).items()})
        bu, bv = quantile_bin_means(u, v, self.options.bins)
        table: kdhub.Table = {"bin": list(range(len(bu))), "u_mean": bu, "v_mean": bv}
        return kdhub.MetricResult(
            scalars=scalars,
            tables={"confidence_bins": table},
            figures={"confidence": self._figure(u, v, table, scalars)},
        )

    def _figure(self, u: torch.Tensor, v: torch.Tensor, table: kdhub.Table, scalars: dict[str, float]):
        fig, (ax,) = new_figure(width=5.0, height=5.0)
        n = u.numel()
        if n > self.options.plot_points:
            pick = torch.randperm(n, generator=torch.Generator().manual_seed(self.options.seed))
            pick = pick[: self.options.plot_points]
            u, v = u[pick], v[pick]
        ax.scatter(u.tolist(), v.tolist(), s=3, alpha=0.3, color="C0", label="samples")
        lo = min(min(table["u_mean"]), min(table["v_mean"]))
        hi = max(max(table["u_mean"]), max(table["v_mean"]))
        ax.plot([lo, hi], [lo, hi], "--", color="gray", label="y = x")
        ax.plot(table["u_mean"], table["v_mean"], "o-", color="C3", markersize=4, label="quantile-bin means")
        ax.set_xlabel("teacher  u = logit p_t(k)")
        ax.set_ylabel("student  v = logit p_s(k)")
        ax.set_title(f"slope {scalars['slope']:.3f} (low {scalars['low_slope']:.3f}, high {scalars['high_slope']:.3f})")
        ax.legend(loc="upper left")
        return fig
