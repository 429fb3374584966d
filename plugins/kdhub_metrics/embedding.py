"""t-SNE maps of the penultimate features of student and teacher, coloured by a class set."""

from __future__ import annotations

import inspect
import math
from typing import Annotated

import torch
from pydantic import Field

import kdhub
from kdhub.contract.figures import new_figure

from ._support import SampleBuffer, role_shapes


def tsne_2d(
    features: torch.Tensor, perplexity: float, max_iter: int, pca_dims: int, seed: int
) -> tuple[torch.Tensor, float]:
    """2-D t-SNE (scikit-learn, PCA init) of ``features`` [n, D]; the perplexity is capped at (n - 1) / 3.

    Returns the coordinates [n, 2] and the perplexity used. Features are reduced to ``pca_dims``
    principal components first when they have more (0 = no reduction).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = features.reshape(features.shape[0], -1).double().cpu().numpy()
    n = x.shape[0]
    if n < 3:
        return torch.full((n, 2), float("nan"), dtype=torch.float64), float("nan")
    if pca_dims and x.shape[1] > pca_dims and n > pca_dims:
        x = PCA(n_components=pca_dims, random_state=seed).fit_transform(x)
    perplexity = min(perplexity, (n - 1) / 3)
    iters = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"  # sklearn < 1.5
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, **{iters: max_iter})
    return torch.from_numpy(tsne.fit_transform(x)).double(), perplexity


class Embedding(kdhub.Metric):
    """t-SNE maps of the penultimate ("pooled") features of student and teacher, coloured by a class set.

    Paper: L. van der Maaten, G. Hinton, "Visualizing Data using t-SNE", JMLR 2008 (scikit-learn's
    implementation); used as in Zhu et al., "Teach Less, Learn More", NeurIPS 2022, to see where
    the undistillable classes fall.

    A fixed-seed random subsample of at most ``max_samples`` samples of the split is kept (its
    pooled features, in summable slots); at the end each model's features are reduced to
    ``pca_dims`` principal components and embedded in 2-D by t-SNE (PCA init, ``random_state =
    seed``, perplexity ``min(perplexity, (n - 1) / 3)``). Points are coloured by class, or, with
    ``highlight`` (e.g. the undistillable classes found by a comparison), the highlighted classes
    in colour and the rest in grey.

    Table ``embedding``: index, label, highlighted, student_x, student_y (and teacher_x,
    teacher_y with a teacher); scalars ``samples`` and ``perplexity``. Figure ``embedding``: one
    map per model -- classes that form tight, separate clusters for the teacher but smear into
    others for the student are the ones the student failed to learn from it.

    Config::

        metrics:
          - name: embedding
            split: test
            options: {max_samples: 2000, highlight: [3, 5, 8]}
    """

    name = "embedding"

    class Options(kdhub.Options):
        role: str = Field(
            "pooled", min_length=1, max_length=200, description="feature role embedded (the penultimate features)"
        )
        max_samples: int = Field(2000, ge=3, le=100_000, description="size of the fixed-seed subsample")
        highlight: list[Annotated[int, Field(ge=0, le=100_000)]] = Field(
            default_factory=list,
            max_length=1000,
            description="classes drawn in colour, the rest in grey (empty = colour by class)",
        )
        perplexity: kdhub.FiniteFloat = Field(
            30.0, gt=0, le=1000, description="t-SNE perplexity (capped at (n - 1) / 3)"
        )
        max_iter: int = Field(1000, ge=250, le=100_000, description="t-SNE iterations")
        pca_dims: int = Field(50, ge=0, le=10_000, description="PCA components before t-SNE (0 = none)")
        seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the subsample and of t-SNE")

    options: Options

    @property
    def feature_roles(self) -> tuple[str, ...]:  # type: ignore[override]  # a capability an option decides
        return (self.options.role,)

    def reset(self, ctx: kdhub.MetricContext) -> None:
        super().reset(ctx)
        bad = [c for c in self.options.highlight if c >= ctx.num_classes]
        if bad:
            raise kdhub.ConfigError(f"embedding: highlight classes {bad} do not exist ({ctx.num_classes} classes)")
        self.buffer = SampleBuffer.random(ctx.num_samples, self.options.max_samples, self.options.seed, ctx.device)
        self.buffer.allocate("labels", ())
        s_shapes, t_shapes = role_shapes(ctx, self.options.role)
        if s_shapes:
            self.buffer.allocate("student", (math.prod(s_shapes[-1]),))
        if t_shapes and ctx.has_teacher:
            self.buffer.allocate("teacher", (math.prod(t_shapes[-1]),))

    def update(self, batch: kdhub.EvalBatch) -> None:
        role = self.options.role
        fs = batch.student_features.get(role)
        if not fs:
            raise kdhub.IncompatibleError(f"embedding needs the {role!r} features of the student in evaluation")
        values = {"labels": batch.labels.float(), "student": fs[-1].flatten(1)}
        ft = batch.teacher_features.get(role)
        if ft:
            values["teacher"] = ft[-1].flatten(1)
        self.buffer.add(batch.indices, **values)

    def accumulators(self) -> dict[str, torch.Tensor]:
        return self.buffer.accumulators()

    def compute(self) -> kdhub.MetricResult:
        index, values = self.buffer.collect()
        n = len(index)
        if n == 0:
            return kdhub.MetricResult()
        labels = [int(v) for v in values["labels"].tolist()]
        highlight = set(self.options.highlight)
        table: kdhub.Table = {
            "index": index.tolist(),
            "label": labels,
            "highlighted": [int(y in highlight) for y in labels],
        }
        o = self.options
        perplexity = float("nan")
        for who in ("student", "teacher"):
            if who in values:
                xy, perplexity = tsne_2d(values[who], o.perplexity, o.max_iter, o.pca_dims, o.seed)
                table[f"{who}_x"], table[f"{who}_y"] = xy[:, 0].tolist(), xy[:, 1].tolist()
        scalars = {"samples": float(n), "perplexity": perplexity}
        figure = _figure(table, self.ctx.class_names, sorted(highlight))
        return kdhub.MetricResult(scalars=scalars, tables={"embedding": table}, figures={"embedding": figure})


def _figure(table: kdhub.Table, class_names: list[str], highlight: list[int]):
    sides = [w for w in ("student", "teacher") if f"{w}_x" in table]
    fig, axes = new_figure(ncols=len(sides), width=5.0, height=5.0)
    labels = table["label"]
    for ax, who in zip(axes, sides, strict=True):
        xs, ys = table[f"{who}_x"], table[f"{who}_y"]
        if highlight:
            rest = [r for r, y in enumerate(labels) if y not in highlight]
            ax.scatter([xs[r] for r in rest], [ys[r] for r in rest], s=4, color="lightgray", label="other classes")
        groups = highlight or sorted(set(labels))
        for color, c in zip(_colors(len(groups)), groups, strict=True):
            rows = [r for r, y in enumerate(labels) if y == c]
            name = class_names[c] if c < len(class_names) else str(c)
            ax.scatter([xs[r] for r in rows], [ys[r] for r in rows], s=6, color=color, label=name)
        ax.set_title(f"{who} (t-SNE of penultimate features)")
        ax.set_xticks([])
        ax.set_yticks([])
        if len(groups) <= 20:
            ax.legend(fontsize="small", markerscale=2, loc="best")
    return fig


def _colors(n: int) -> list:
    import matplotlib

    if n <= 20:
        cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
        return [cmap(k) for k in range(n)]
    cmap = matplotlib.colormaps["hsv"]
    return [cmap(k / n) for k in range(n)]
