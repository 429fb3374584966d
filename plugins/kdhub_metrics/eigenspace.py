"""First-layer weight change in the eigenbasis of the input covariance (the eigenspace view of distillation)."""

from __future__ import annotations

import math
import warnings
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

import kdhub
from kdhub.contract.figures import new_figure

_Direction = Annotated[int, Field(ge=-100_000, le=100_000)]


def first_layer(net: nn.Module, name: str | None = None) -> tuple[str, nn.Conv2d | nn.Linear]:
    """The module called ``name``, or the first ``nn.Conv2d`` / ``nn.Linear`` in ``net.named_modules()`` order."""
    modules = dict(net.named_modules())
    if name is not None:
        if name not in modules:
            raise kdhub.IncompatibleError(f"eigenspace: the student has no module {name!r}")
        module = modules[name]
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise kdhub.IncompatibleError(
                f"eigenspace: module {name!r} is a {type(module).__name__}, not Conv2d/Linear"
            )
        found = (name, module)
    else:
        first = next(((n, m) for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
        if first is None:
            raise kdhub.IncompatibleError("eigenspace: the student has no Conv2d or Linear layer")
        found = first
    if isinstance(found[1], nn.Conv2d) and found[1].groups != 1:
        raise kdhub.IncompatibleError(f"eigenspace: {found[0]!r} is a grouped convolution (groups != 1)")
    return found


def weight_matrix(layer: nn.Conv2d | nn.Linear) -> Tensor:
    """The layer's weight as ``[C_out, d]`` (a conv's ``[C_out, C_in·kh·kw]``), detached, float64, on the CPU."""
    return layer.weight.detach().reshape(layer.weight.shape[0], -1).double().cpu()


def _conv_geometry(layer: nn.Conv2d, h: int, w: int) -> tuple[tuple[int, int, int, int], int, int]:
    kh, kw = layer.kernel_size
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            pads = (0, 0, 0, 0)
        else:  # "same": PyTorch puts the odd pixel on the right / bottom
            th, tw = dh * (kh - 1), dw * (kw - 1)
            pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        ph, pw = layer.padding
        pads = (pw, pw, ph, ph)
    ho = (h + pads[2] + pads[3] - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pads[0] + pads[1] - dw * (kw - 1) - 1) // sw + 1
    return pads, ho, wo


def conv_positions(layer: nn.Conv2d, x: Tensor) -> int:
    """Number of im2col patches of a batch ``x`` [B, C, H, W] (B · H_out · W_out)."""
    _, ho, wo = _conv_geometry(layer, x.shape[2], x.shape[3])
    return x.shape[0] * ho * wo


def conv_patches(layer: nn.Conv2d, x: Tensor, positions: Tensor) -> Tensor:
    """im2col rows ``[m, C·kh·kw]`` of ``x`` [B, C, H, W] at flat output positions (b, h_out, w_out)."""
    pads, ho, wo = _conv_geometry(layer, x.shape[2], x.shape[3])
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    xp = F.pad(x, pads, mode=mode) if any(pads) else x
    kh, kw = layer.kernel_size
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    b, rest = positions // (ho * wo), positions % (ho * wo)
    oh, ow = rest // wo, rest % wo
    rows = (oh * sh)[:, None, None] + (torch.arange(kh, device=x.device) * dh)[None, :, None]
    cols = (ow * sw)[:, None, None] + (torch.arange(kw, device=x.device) * dw)[None, None, :]
    patches = xp[b[:, None, None], :, rows, cols]  # [m, kh, kw, C]: advanced dims come first
    return patches.permute(0, 3, 1, 2).reshape(positions.shape[0], -1)


def eigen_components(delta: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues of ``sigma`` by decreasing value and ``a_k = ||delta v_k||₂`` for their eigenvectors v_k."""
    values, vectors = torch.linalg.eigh(sigma.double())
    values, vectors = values.flip(0), vectors.flip(1)
    return values, torch.linalg.vector_norm(delta.double() @ vectors, dim=0)


def top_share(a: Tensor, k: int) -> float:
    """``F_K = sum_{k <= K} a_k² / sum_k a_k²`` (NaN when every a_k is 0)."""
    total = a.double().square().sum().item()
    return a.double()[:k].square().sum().item() / total if total > 0 else math.nan


class Eigenspace(kdhub.Metric):
    """First-layer weight change along the eigenvectors of the input covariance: a_k(t) and the top-K share F_K.

    Paper: V. Nagarajan, A. K. Menon, S. Bhojanapalli, H. Mobahi, S. Kumar, "On student-teacher
    deviations in distillation: does it pay to disobey?", NeurIPS 2023 -- their claim that
    distillation exaggerates the implicit bias of gradient descent: the student moves faster
    along the top eigendirections of the data. They publish no code; this is kdhub's design.

    The first layer of the student (option ``layer``, default the first ``Conv2d`` / ``Linear``)
    has weights W as ``C_out x d`` (a conv's ``C_out x C_in·kh·kw``). Its inputs X (n x d) are
    ``patches`` random im2col patches (rows, for a linear layer) of the inputs it receives during
    the evaluation, drawn with a fixed-seed generator (``ceil(patches · B / N)`` per batch of B of
    the split's N samples; 0 = every patch), captured by a forward pre-hook registered in
    ``reset`` and removed in ``compute``. ``Σ = XᵀX / n`` (uncentred, summed across processes),
    eigenvectors v_k by decreasing eigenvalue; ``a_k(t) = ||(W_t - W_0) v_k||₂`` with W_0 the
    weights when training started (``start``; kept in checkpoints), and
    ``F_K(t) = sum_{k <= K} a_k² / sum_k a_k²``. For linear regression trained by GD from 0 with
    step η, the component along v_k is ``(1 - (1 - η λ_k)^t) w*_k``: top directions are learned
    first. The signature of exaggerated bias: F_K of a distilled student above that of the
    one-hot student early in training (compare two runs' ``top_share`` curves).

    Only the student is measured: a distillation run's teacher is frozen and its W_0 is unknown,
    so its trajectory is the one logged in the run that trained it (where it was the student).

    Scalars ``top_share`` (F_K), ``a_top`` (a_1), ``a_bottom`` (a_d), ``weight_change``
    (``||W_t - W_0||_F``), ``patches`` (rows in Σ). Tables ``eigenspace`` (k, eigenvalue, a,
    share, cumulative share) and ``eigenspace_history`` (epoch, top_share, a_i for each index in
    ``pairs``). Figure ``eigenspace``: left, the share of the weight change per eigendirection
    (bars) with the eigenvalues (line, log scale); right, the trajectories of (a_i, a_j) over the
    evaluations for each pair -- a curve that rises along the x axis (top direction) before the
    y axis (bottom direction) is the implicit bias.

    Config (evaluate every few epochs to get trajectories)::

        metrics:
          - name: eigenspace
            split: train
            every: 5
            options: {patches: 10000, top_k: 5, pairs: [[0, -1]]}
    """

    name = "eigenspace"

    class Options(kdhub.Options):
        layer: str | None = Field(
            None, min_length=1, max_length=1000, description="module name of the layer (default: first Conv2d/Linear)"
        )
        patches: int = Field(10_000, ge=0, le=100_000_000, description="random input patches for Σ (0 = all)")
        top_k: int = Field(5, ge=1, le=100_000, description="K of the top-K share F_K (capped at d)")
        pairs: list[tuple[_Direction, _Direction]] = Field(
            default_factory=lambda: [(0, -1)],
            max_length=100,
            description="eigen-direction indices (i, j) whose (a_i, a_j) trajectories are drawn; -1 = the last",
        )
        seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the patch sampling")

    options: Options

    def __init__(self, options: kdhub.Options | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.w0: Tensor | None = None
        self.history: list[dict[str, Any]] = []
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def start(self, ctx: kdhub.MetricContext) -> None:
        _, layer = first_layer(ctx.student, self.options.layer)
        self.w0 = weight_matrix(layer).clone()

    def reset(self, ctx: kdhub.MetricContext) -> None:
        super().reset(ctx)
        self._remove_hook()
        self.layer_name, self.layer = first_layer(ctx.student, self.options.layer)
        if self.w0 is None:
            warnings.warn(
                "eigenspace: start() was not called; W_0 is the weights at the first evaluation", stacklevel=2
            )
            self.w0 = weight_matrix(self.layer).clone()
        d = self.w0.shape[1]
        self.xtx = torch.zeros(d, d, dtype=torch.float64, device=ctx.device)
        self.rows = torch.zeros((), dtype=torch.float64, device=ctx.device)
        self.generator = torch.Generator(device=ctx.device).manual_seed(self.options.seed + 1000003 * ctx.epoch)
        self._handle = self.layer.register_forward_pre_hook(self._capture)

    def _remove_hook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @torch.no_grad()
    def _capture(self, layer: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        samples = x.shape[0]
        if isinstance(layer, nn.Conv2d):
            total = conv_positions(layer, x)
        else:
            x = x.reshape(-1, x.shape[-1])
            total = x.shape[0]
        count = total
        if self.options.patches:
            split_size = self.ctx.num_samples or samples  # unknown: `patches` per batch
            count = min(total, math.ceil(self.options.patches * samples / split_size))
        if count == total:
            positions = torch.arange(total, device=x.device)
        else:
            positions = torch.randint(0, total, (count,), generator=self.generator, device=x.device)
        rows = conv_patches(layer, x, positions) if isinstance(layer, nn.Conv2d) else x[positions]
        rows = rows.double().to(self.xtx.device)
        self.xtx += rows.T @ rows
        self.rows += count

    def update(self, batch: kdhub.EvalBatch) -> None:
        """Nothing to read from the batch: the pre-hook sees the layer's inputs during the evaluation."""

    def accumulators(self) -> dict[str, Tensor]:
        return {"xtx": self.xtx, "rows": self.rows}

    def compute(self) -> kdhub.MetricResult:
        self._remove_hook()
        n = self.rows.item()
        if n == 0:
            return kdhub.MetricResult()
        sigma = self.xtx.cpu() / n
        assert self.w0 is not None  # reset() set it
        delta = weight_matrix(self.layer) - self.w0
        eigenvalues, a = eigen_components(delta, sigma)
        d = a.numel()
        for pair in self.options.pairs:
            if not all(-d <= i < d for i in pair):
                raise kdhub.IncompatibleError(f"eigenspace: pair {pair} is out of range for d = {d}")
        k = min(self.options.top_k, d)
        share = top_share(a, k)
        self.history.append({"epoch": self.ctx.epoch, "top_share": share, "a": a.tolist()})
        total = a.square().sum()
        shares = (a.square() / total).tolist() if total > 0 else [math.nan] * d
        table: kdhub.Table = {
            "k": list(range(1, d + 1)),
            "eigenvalue": eigenvalues.tolist(),
            "a": a.tolist(),
            "share": shares,
            "cumulative_share": torch.tensor(shares).cumsum(0).tolist(),
        }
        indices = sorted({i % d for pair in self.options.pairs for i in pair})
        history: kdhub.Table = {
            "epoch": [h["epoch"] for h in self.history],
            "top_share": [h["top_share"] for h in self.history],
        }
        for i in indices:
            history[f"a_{i + 1}"] = [h["a"][i] if i < len(h["a"]) else math.nan for h in self.history]
        scalars = {
            "top_share": share,
            "a_top": a[0].item(),
            "a_bottom": a[-1].item(),
            "weight_change": torch.linalg.vector_norm(delta).item(),
            "patches": float(n),
        }
        return kdhub.MetricResult(
            scalars=scalars,
            tables={"eigenspace": table, "eigenspace_history": history},
            figures={"eigenspace": self._figure(table, history, d)},
        )

    def _figure(self, table: kdhub.Table, history: kdhub.Table, d: int):
        fig, (left, right) = new_figure(ncols=2, width=4.5, height=3.8)
        left.bar(table["k"], [0.0 if v != v else v for v in table["share"]], color="C0")
        left.set_xlabel("eigendirection k (decreasing eigenvalue)")
        left.set_ylabel("share of ||W_t - W_0||² along v_k")
        twin = left.twinx()
        twin.plot(table["k"], [max(v, 1e-30) for v in table["eigenvalue"]], color="C1")
        twin.set_yscale("log")
        twin.set_ylabel("eigenvalue of Σ", color="C1")
        for i, j in self.options.pairs:
            xs, ys = history[f"a_{i % d + 1}"], history[f"a_{j % d + 1}"]
            right.plot(xs, ys, "o-", markersize=3, label=f"(a_{i % d + 1}, a_{j % d + 1})")
            for e, x, y in zip(history["epoch"], xs, ys, strict=True):
                right.annotate(str(e), (x, y), fontsize="x-small")
        right.set_xlabel("a_i (top direction)")
        right.set_ylabel("a_j (bottom direction)")
        right.set_title(f"F_{min(self.options.top_k, d)} = {history['top_share'][-1]:.3f}")
        right.legend(fontsize="small")
        return fig

    def state_dict(self) -> dict[str, Any]:
        return {"w0": self.w0, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w0 = state.get("w0")
        self.history = list(state.get("history", []))
