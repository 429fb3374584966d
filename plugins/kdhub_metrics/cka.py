"""Linear CKA between student and teacher layers: full, minibatch (unbiased HSIC) and per sample."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

import kdhub
from kdhub.contract.figures import new_figure
from kdhub.contract.functional import nanmean

from ._support import SampleBuffer, role_shapes

_Layer = Annotated[int, Field(ge=0, le=1000)]
_Example = Annotated[int, Field(ge=0, le=100_000_000)]

_CHUNK_BYTES = 64 * 2**20  # float64 working set of one column chunk of a Gram matrix


def gram(x: Tensor, center: bool = False) -> Tensor:
    """``X Xᵀ`` in float64 for ``x`` [n, ...] (flattened), optionally column-centred; column chunks bound memory."""
    x = x.reshape(x.shape[0], -1)
    n, p = x.shape
    chunk = max(1, _CHUNK_BYTES // (8 * max(n, 1)))
    k = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for start in range(0, p, chunk):
        c = x[:, start : start + chunk].double()
        if center:
            c = c - c.mean(dim=0)
        k += c @ c.T
    return k


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, NaN where the denominator is not positive (never an error)."""
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.full_like(num, math.nan))


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA (Kornblith et al. 2019) of features ``x`` [n, ...] and ``y`` [n, ...], flattened, in float64.

    ``CKA = ||Ycᵀ Xc||²_F / (||Xcᵀ Xc||_F ||Ycᵀ Yc||_F)`` with column-centred Xc, Yc, computed in the
    feature form when n >= p, q and from the n x n Gram matrices otherwise (the same value).
    """
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs the same samples on both sides, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] >= max(x.shape[1], y.shape[1]):
        xc = x.double() - x.double().mean(dim=0)
        yc = y.double() - y.double().mean(dim=0)
        num = (yc.T @ xc).square().sum()
        den = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    else:
        k, lg = gram(x, center=True), gram(y, center=True)
        num = (k * lg).sum()
        den = torch.sqrt((k * k).sum() * (lg * lg).sum())
    return _ratio(num, den)


def unbiased_hsic(k: Tensor, lg: Tensor) -> Tensor:
    """Unbiased HSIC₁ of Gram matrices (Song et al. 2012; Nguyen et al. 2021), batch size b >= 4.

    ``[tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((b-1)(b-2)) - 2/(b-2) 1ᵀK̃L̃1] / (b(b-3))`` with K̃, L̃ the Gram
    matrices with zeroed diagonals.
    """
    b = k.shape[0]
    if b < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples, got {b}")
    k = k.double().clone()
    lg = lg.double().clone()
    k.fill_diagonal_(0)  # not k - torch.diag(k): that broadcasts a vector over the rows
    lg.fill_diagonal_(0)
    trace = (k * lg.T).sum()
    ones = k.sum() * lg.sum() / ((b - 1) * (b - 2))
    cross = k.sum(dim=0) @ lg.sum(dim=1) * (2.0 / (b - 2))
    return (trace + ones - cross) / (b * (b - 3))


def hsic_terms(x: Tensor, y: Tensor) -> Tensor:
    """``[HSIC₁(K, L), HSIC₁(K, K), HSIC₁(L, L)]`` of one batch, with K = XXᵀ and L = YYᵀ (linear kernels)."""
    k, lg = gram(x), gram(y)
    return torch.stack([unbiased_hsic(k, lg), unbiased_hsic(k, k), unbiased_hsic(lg, lg)])


def cka_from_hsic(sums: Tensor) -> Tensor:
    """``ΣHSIC₁(K, L) / √(ΣHSIC₁(K, K) ΣHSIC₁(L, L))`` from summed :func:`hsic_terms`; NaN if not positive."""
    sums = sums.double()
    return _ratio(sums[..., 0], torch.sqrt((sums[..., 1] * sums[..., 2]).clamp_min(0)) * (sums[..., 1] > 0))


def debiased_cka(x: Tensor, y: Tensor) -> Tensor:
    """Debiased linear CKA of all samples at once (one batch of :func:`minibatch_cka`)."""
    return cka_from_hsic(hsic_terms(x, y))


def minibatch_cka(x: Tensor | Iterable[Tensor], y: Tensor | Iterable[Tensor], batch_size: int | None = None) -> Tensor:
    """Minibatch CKA (Nguyen et al. 2021): unbiased HSIC₁ summed over batches of equal size b >= 4.

    Pass either tensors and ``batch_size`` (contiguous batches; a smaller last batch is dropped) or
    two iterables of equal-size batches.
    """
    if isinstance(x, Tensor):
        if batch_size is None:
            raise ValueError("minibatch_cka needs batch_size when given whole tensors")
        if not isinstance(y, Tensor):
            raise TypeError("pass both x and y as tensors or both as iterables of batches")
        full = (x.shape[0] // batch_size) * batch_size
        xs, ys = x[:full].split(batch_size), y[:full].split(batch_size)
    else:
        xs, ys = list(x), list(y)
    sums = torch.zeros(3, dtype=torch.float64)
    for xb, yb in zip(xs, ys, strict=True):
        sums = sums.to(xb.device) + hsic_terms(xb, yb)
    return cka_from_hsic(sums)


def per_sample_cka(fs: Tensor, ft: Tensor) -> Tensor:
    """CKA of one sample's feature maps ``fs`` [C1, H1, W1] and ``ft`` [C2, H2, W2] (Zhu et al., Fig. 1).

    Spatial positions are the rows (X = H·W x C); the larger map is average-pooled to the smaller
    size first. NaN for features without spatial dimensions.
    """
    if fs.dim() != 3 or ft.dim() != 3:
        return torch.tensor(math.nan, dtype=torch.float64)
    size = (min(fs.shape[1], ft.shape[1]), min(fs.shape[2], ft.shape[2]))
    fs = F.adaptive_avg_pool2d(fs.double()[None], size)[0]
    ft = F.adaptive_avg_pool2d(ft.double()[None], size)[0]
    return linear_cka(fs.flatten(1).T, ft.flatten(1).T)


class CKA(kdhub.Metric):
    """Linear CKA between student and teacher layers: full, minibatch (unbiased HSIC) and per sample.

    Papers: S. Kornblith, M. Norouzi, H. Lee, G. Hinton, "Similarity of Neural Network
    Representations Revisited", ICML 2019 (linear CKA); T. Nguyen, M. Raghu, S. Kornblith, "Do Wide
    and Deep Networks Learn the Same Things?", ICLR 2021 (minibatch CKA from unbiased HSIC, their
    efficient_CKA code); Zhu et al., "Teach Less, Learn More", NeurIPS 2022 (CKA per layer and
    per sample, Figure 1).

    For each pair (student layer i, teacher layer j) of the feature role ``role`` (default
    "stages": student stage i vs teacher stage i; option ``pairs`` picks others), features are
    flattened per sample:

    - ``full_s<i>_t<j>``: ``||Ycᵀ Xc||²_F / (||Xcᵀ Xc||_F ||Ycᵀ Yc||_F)`` in float64 with
      column-centred features, on a fixed-seed random subsample of at most ``max_samples``
      samples, shrunk further so the stored features fit ``max_memory_mb`` (the scalar
      ``full_samples`` says how many were used);
    - ``minibatch_s<i>_t<j>``: ``ΣHSIC₁(K, L) / √(ΣHSIC₁(K, K) ΣHSIC₁(L, L))`` over all
      evaluation batches, ``K = XXᵀ``, ``L = YYᵀ`` per batch, ``HSIC₁`` the unbiased estimator
      (diagonals zeroed with ``fill_diagonal_``). Batches must have equal size b >= 4: the first
      batch fixes b and batches of another size (a smaller last one) are skipped
      (``minibatch_batches`` counts those used). Both models see the same batches in the same
      order. A non-positive denominator gives NaN.
    - per sample, for the split indices in ``examples``: spatial positions as rows (X = H·W x C),
      the larger map average-pooled to the smaller size; table ``cka_per_sample``.

    Means over pairs: ``full_mean``, ``minibatch_mean``. Tables ``cka`` (pair, student_layer,
    teacher_layer, full, minibatch) and ``cka_per_sample`` (index, label, one column per pair).
    Figure ``cka``: CKA per layer pair (bars, 1 = identical representations up to rotation and
    scale); figure ``cka_per_sample``: a heatmap of examples x pairs -- rows much darker than the
    others are samples whose representations the student failed to match (the paper finds them
    concentrated in undistillable classes).

    Config::

        metrics:
          - name: cka
            split: test
            options: {role: stages, max_samples: 2048, examples: [0, 1, 2, 3]}
    """

    name = "cka"
    needs_teacher = True

    class Options(kdhub.Options):
        role: str = Field("stages", min_length=1, max_length=200, description="feature role compared on both models")
        pairs: list[tuple[_Layer, _Layer]] | None = Field(
            None, max_length=1000, description="(student layer, teacher layer) pairs; default: layer i with layer i"
        )
        max_samples: int = Field(
            2048, ge=0, le=1_000_000, description="samples of the full CKA's fixed-seed subsample (0 = no full CKA)"
        )
        max_memory_mb: kdhub.FiniteFloat = Field(
            1024.0, gt=0, le=1_000_000, description="bound on the full CKA's feature buffers; the subsample shrinks"
        )
        minibatch: bool = Field(True, description="accumulate the minibatch CKA over evaluation batches")
        examples: list[_Example] = Field(
            default_factory=lambda: list(range(12)), max_length=1024, description="split indices for per-sample CKA"
        )
        seed: int = Field(
            0, ge=0, le=2**32 - 1, description="seed of the subsample (fixed, so runs compare on the same samples)"
        )

    options: Options

    @property
    def feature_roles(self) -> tuple[str, ...]:  # type: ignore[override]  # a capability an option decides
        return (self.options.role,)

    def reset(self, ctx: kdhub.MetricContext) -> None:
        super().reset(ctx)
        self.pairs: list[tuple[int, int]] = []
        # the evaluation's batch size (a smaller last batch is left out, whichever process gets it)
        self.batch_size = min(ctx.batch_size, ctx.num_samples) if ctx.batch_size and ctx.num_samples else 0
        self.hsic: Tensor | None = None
        self.batches = torch.zeros((), dtype=torch.float64, device=ctx.device)
        self.full: SampleBuffer | None = None
        self.examples: SampleBuffer | None = None
        s_shapes, t_shapes = role_shapes(ctx, self.options.role)
        if s_shapes and t_shapes:
            self._allocate(s_shapes, t_shapes)

    def _allocate(self, s_shapes: list[tuple[int, ...]], t_shapes: list[tuple[int, ...]]) -> None:
        """Pairs and buffers from the per-sample feature shapes (dry run, or else the first batch)."""
        pairs = self.options.pairs
        if pairs is None:
            pairs = [(i, i) for i in range(min(len(s_shapes), len(t_shapes)))]
        for i, j in pairs:
            if i >= len(s_shapes) or j >= len(t_shapes):
                raise kdhub.IncompatibleError(
                    f"cka pair ({i}, {j}) is out of range: role {self.options.role!r} has {len(s_shapes)} student "
                    f"and {len(t_shapes)} teacher layers"
                )
        self.pairs = [(int(i), int(j)) for i, j in pairs]
        self.hsic = torch.zeros(len(self.pairs), 3, dtype=torch.float64, device=self.ctx.device)
        s_layers, t_layers = self._layers()
        shapes = {f"s{i}": tuple(s_shapes[i]) for i in s_layers} | {f"t{j}": tuple(t_shapes[j]) for j in t_layers}
        if self.options.max_samples > 0:
            per_sample = 4 * sum(math.prod(shape) for shape in shapes.values())
            fit = int(self.options.max_memory_mb * 2**20 // max(per_sample, 1))
            capacity = min(self.options.max_samples, fit)
            if capacity >= 2:
                self.full = SampleBuffer.random(self.ctx.num_samples, capacity, self.options.seed, self.ctx.device)
                for name, shape in shapes.items():
                    self.full.allocate(name, shape)
        if self.options.examples:
            self.examples = SampleBuffer(torch.tensor(sorted(set(self.options.examples))), self.ctx.device)
            self.examples.allocate("labels", ())
            for name, shape in shapes.items():
                self.examples.allocate(name, shape)

    def _layers(self) -> tuple[list[int], list[int]]:
        return sorted({i for i, _ in self.pairs}), sorted({j for _, j in self.pairs})

    def update(self, batch: kdhub.EvalBatch) -> None:
        role = self.options.role
        if batch.teacher_logits is None:
            raise kdhub.IncompatibleError("cka needs a teacher")
        fs, ft = batch.student_features.get(role), batch.teacher_features.get(role)
        if not fs or not ft:
            raise kdhub.IncompatibleError(f"cka needs the {role!r} features of both models in evaluation")
        b = batch.labels.shape[0]
        if self.hsic is None:
            self._allocate([tuple(f.shape[1:]) for f in fs], [tuple(f.shape[1:]) for f in ft])
        if not self.batch_size:
            self.batch_size = b  # no batch size on the context: the first batch fixes it
        s_layers, t_layers = self._layers()
        if self.options.minibatch and b == self.batch_size and b >= 4:
            grams_s = {i: gram(fs[i]) for i in s_layers}
            grams_t = {j: gram(ft[j]) for j in t_layers}
            self_s = {i: unbiased_hsic(k, k) for i, k in grams_s.items()}
            self_t = {j: unbiased_hsic(k, k) for j, k in grams_t.items()}
            hsic = self.hsic
            assert hsic is not None  # allocated above
            for row, (i, j) in enumerate(self.pairs):
                hsic[row, 0] += unbiased_hsic(grams_s[i], grams_t[j])
                hsic[row, 1] += self_s[i]
                hsic[row, 2] += self_t[j]
            self.batches += 1
        stored = {f"s{i}": fs[i] for i in s_layers} | {f"t{j}": ft[j] for j in t_layers}
        if self.full is not None:
            self.full.add(batch.indices, **stored)
        if self.examples is not None:
            self.examples.add(batch.indices, labels=batch.labels.float(), **stored)

    def accumulators(self) -> dict[str, Tensor]:
        out = {"batches": self.batches}
        if self.hsic is not None:
            out["hsic"] = self.hsic
        if self.full is not None:
            out.update(self.full.accumulators("full_"))
        if self.examples is not None:
            out.update(self.examples.accumulators("examples_"))
        return out

    def compute(self) -> kdhub.MetricResult:
        if self.hsic is None:
            return kdhub.MetricResult()
        names = [f"s{i}_t{j}" for i, j in self.pairs]
        table: kdhub.Table = {
            "pair": names,
            "student_layer": [i for i, _ in self.pairs],
            "teacher_layer": [j for _, j in self.pairs],
        }
        scalars: dict[str, float] = {}
        if self.options.max_samples > 0:  # reported even when the memory bound left no room (0 samples)
            feats = self.full.collect()[1] if self.full is not None else {}
            n = len(next(iter(feats.values()))) if feats else 0
            values = [linear_cka(feats[f"s{i}"], feats[f"t{j}"]).item() if n >= 2 else math.nan for i, j in self.pairs]
            table["full"] = values
            scalars.update({f"full_{name}": v for name, v in zip(names, values, strict=True)})
            scalars["full_mean"] = nanmean(values)
            scalars["full_samples"] = float(n)
        if self.options.minibatch:
            values = cka_from_hsic(self.hsic.cpu()).tolist()
            table["minibatch"] = values
            scalars.update({f"minibatch_{name}": v for name, v in zip(names, values, strict=True)})
            scalars["minibatch_mean"] = nanmean(values)
            scalars["minibatch_batches"] = float(self.batches.item())
            scalars["minibatch_batch_size"] = float(self.batch_size)
        tables = {"cka": table}
        figures = {"cka": _layer_figure(table)}
        if self.examples is not None:
            index, feats = self.examples.collect()
            if len(index):
                per = {"index": index.tolist(), "label": [int(v) for v in feats["labels"].tolist()]}
                for name, (i, j) in zip(names, self.pairs, strict=True):
                    s, t = feats[f"s{i}"], feats[f"t{j}"]
                    per[name] = [per_sample_cka(s[r], t[r]).item() for r in range(len(index))]
                tables["cka_per_sample"] = per
                figures["cka_per_sample"] = _sample_figure(per, names, self.ctx.class_names)
        return kdhub.MetricResult(scalars=scalars, tables=tables, figures=figures)


def _layer_figure(table: kdhub.Table):
    n = len(table["pair"])
    fig, (ax,) = new_figure(width=max(4.0, 0.8 * n + 2), height=3.5)
    kinds = [k for k in ("full", "minibatch") if k in table]
    width = 0.8 / max(len(kinds), 1)
    for offset, kind in enumerate(kinds):
        xs = [x + (offset - (len(kinds) - 1) / 2) * width for x in range(n)]
        ax.bar(xs, [0.0 if v != v else v for v in table[kind]], width, label=kind)
    ax.set_xticks(range(n), table["pair"])
    ax.set_xlabel("student layer / teacher layer")
    ax.set_ylabel("linear CKA")
    ax.set_ylim(0, 1.05)
    if kinds:
        ax.legend()
    return fig


def _sample_figure(per: kdhub.Table, names: list[str], class_names: list[str]):
    rows = len(per["index"])
    fig, (ax,) = new_figure(width=max(3.0, 0.9 * len(names) + 2.5), height=max(2.5, 0.3 * rows + 1.2))
    data = [[per[name][r] for name in names] for r in range(rows)]
    image = ax.imshow(data, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    labels = [class_names[y] if 0 <= y < len(class_names) else str(y) for y in per["label"]]
    ax.set_yticks(range(rows), [f"#{i} ({name})" for i, name in zip(per["index"], labels, strict=True)])
    ax.set_xticks(range(len(names)), names)
    ax.set_xlabel("student layer / teacher layer")
    fig.colorbar(image, ax=ax, label="per-sample CKA")
    return fig
