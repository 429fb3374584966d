"""Teach Less, Learn More: stop teaching the classes whose distillation loss stagnates."""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

import kdhub
from kdhub.figures import new_figure
from kdhub.functional import kl_per_sample


class TLLM(kdhub.Policy):
    """Stop distilling the classes whose per-class teaching curve stops falling (Zhu et al., 2022).

    Paper: Y. Zhu, N. Liu, Z. Xu, X. Liu, W. Meng, L. Wang, Z. Ou, J. Tang, "Teach Less, Learn More:
    On the Undistillable Classes in Knowledge Distillation", NeurIPS 2022 (section 3, appendix B).

    The paper's code is not public; this is kdhub's reading of it.

    - **Teaching curve.** After each epoch ``e`` the engine evaluates both models (eval mode, no
      augmentation) on a class-balanced validation split held out of the *training* set
      (``data.val_fraction``, 5% in the paper; never the test set) and reports
      ``L_e[m]`` = mean over the validation samples of ground-truth class ``m`` of the run's own
      per-sample distillation loss (its methods, temperatures and weights). A run whose methods are
      all batch-relational uses KD at ``temperature`` instead (logged as ``tllm/curve_loss``).
    - **Decision.** ``mode: sliding`` (the paper's "moving window"): at every epoch
      ``e >= S + K``, an active class ``m`` is stopped when ``L_{e-K}[m] - L_e[m] <= eta`` (its loss
      fell by no more than ``eta`` over the last ``K`` epochs, or rose). ``mode: fixed``: a single
      check at ``e = S + K`` (the literal ``l_S - l_{S+K} <= eta``). No new stop after ``end``;
      stopped classes stay stopped. A NaN at either end of the window skips that class for that
      epoch; a class with no validation sample is never stopped. At most
      ``floor(max_stopped_fraction * C)`` classes are stopped; when an epoch has more candidates
      than room, those whose loss fell least (rose most) go first, ties by class index.
    - **Loss** with stopped set ``D`` (sample ``i`` taught iff ``y_i`` not in ``D``)::

          L = w_ce * CE(z_s, y) + w_kd * (1/B) * sum_i [1{y_i not in D} l_i + 1{y_i in D} l_LS,i]

      where ``l_LS`` is the label-smoothed cross-entropy (``alpha = smoothing``, T = 1, no T^2)
      standing in for *output-based* methods (``replacement: label_smoothing``); feature methods
      are only dropped for stopped classes, batch-relational ones use the taught samples only.
      Cross-entropy keeps every class; the teacher's distribution is not renormalised.

    The paper publishes no S, K or eta: the defaults are S = 10% and K = 5% of the epochs
    (K >= 1, S >= 1 since there is no L_0) and eta = 0; the paper tunes eta on a second
    held-out split. Label smoothing uses alpha = 0.1 as in the paper's appendix.

    Logged: ``tllm/stopped_classes`` per epoch; the tables ``tllm_curves`` (epoch x class) and
    ``tllm_stopped`` (class, name, stopped_epoch), written when the stopped set changes and after
    the last epoch; the figure ``tllm_curves`` (stopped classes highlighted) after the last epoch::

        ce_weight: 0.1
        methods: [{name: kd, weight: 0.9, options: {temperature: 4}}]
        data: {name: cifar100, val_fraction: 0.05}
        policy: {name: tllm, options: {mode: sliding, start: 0.1, window: 0.05, eta: 0.0}}
    """

    name = "tllm"
    wants_class_losses = True
    needs_validation = True
    needs_methods = True

    class Options(kdhub.Options):
        mode: Literal["sliding", "fixed"] = Field(
            "sliding", description="sliding: check every epoch >= S+K; fixed: one check at S+K"
        )
        start: kdhub.EpochOrFraction = Field(
            0.1, description="S: the first window starts at this epoch (int; 0 reads as 1) or fraction of the run"
        )
        window: kdhub.EpochOrFraction = Field(
            0.05, description="K: window length in epochs (int) or as a fraction of the run (at least 1 epoch)"
        )
        eta: kdhub.FiniteFloat = Field(
            0.0, ge=0, le=1e6, description="stop a class when its loss fell by <= eta over the window"
        )
        end: kdhub.EpochOrFraction | None = Field(
            None, description="no new stops after this epoch (int) or fraction of the run (None = never)"
        )
        max_stopped_fraction: kdhub.FiniteFloat = Field(
            1.0, ge=0, le=1, description="at most floor(fraction * classes) classes are ever stopped"
        )
        replacement: Literal["label_smoothing", "none"] = Field(
            "label_smoothing", description="loss standing in for output-based methods on stopped classes"
        )
        smoothing: kdhub.FiniteFloat = Field(
            0.1, ge=0, le=1, description="label-smoothing alpha of the replacement loss"
        )
        temperature: kdhub.FiniteFloat = Field(
            4.0,
            ge=0.01,
            le=100,
            description="KD temperature of the teaching curve when every method is batch-relational",
        )
        kd_weight: kdhub.FiniteFloat = Field(1.0, ge=0, le=1e6, description="factor on every method's weight")

    def __init__(self, options: kdhub.Options | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.curves: dict[int, list[float]] = {}
        self.stopped: dict[int, int] = {}
        self._warned: set[str] = set()
        self._curve_source: str | None = None
        self.unvalidated: list[int] = []
        self._plan = kdhub.StepPlan()
        self.ctx: kdhub.PolicyContext | None = None

    # -- run start -------------------------------------------------------------------------

    def setup(self, ctx: kdhub.PolicyContext) -> None:
        super().setup(ctx)
        if not ctx.method_names:
            raise kdhub.ConfigError("policy: tllm selects the classes a teacher teaches; the run has no methods")
        o = self.options
        self.start_epoch = kdhub.resolve_epoch(o.start, ctx.epochs, minimum=1)
        self.window_epochs = kdhub.resolve_epoch(o.window, ctx.epochs, minimum=1)
        self.end_epoch = None if o.end is None else kdhub.resolve_epoch(o.end, ctx.epochs)
        self.max_stopped = math.floor(o.max_stopped_fraction * ctx.num_classes + 1e-9)
        counts = ctx.validation_class_counts
        if counts is not None:
            self.unvalidated = [int(m) for m in (counts.cpu() == 0).nonzero().flatten()]
        first = self.start_epoch + self.window_epochs
        if first > ctx.epochs:
            warnings.warn(
                f"tllm: the first decision (epoch S+K = {first}) is after the last epoch ({ctx.epochs}); "
                "no class will be stopped",
                stacklevel=2,
            )
        self._rebuild_plan()

    def _rebuild_plan(self) -> None:
        ctx = self.ctx
        if ctx is None:
            return
        mask = None
        if self.stopped:
            host = torch.ones(ctx.num_classes, dtype=torch.bool)
            host[list(self.stopped)] = False
            mask = host.to(ctx.device)
        self._plan = kdhub.StepPlan(kd_weight=self.options.kd_weight, class_mask=mask)

    # -- per step ----------------------------------------------------------------------------

    def plan(self, epoch: int, step: int) -> kdhub.StepPlan:
        return self._plan

    def replacement_loss(self, out: kdhub.StepOutputs) -> Tensor | None:
        if self.options.replacement == "none":
            return None
        return F.cross_entropy(
            out.student_logits.float(), out.labels, reduction="none", label_smoothing=self.options.smoothing
        )

    def sample_losses(self, out: kdhub.StepOutputs, method_losses: Tensor | None) -> Tensor | None:
        if method_losses is not None:
            self._curve_source = "methods"
            return method_losses
        self._curve_source = f"kd(T={self.options.temperature:g})"
        return _kd_per_sample(out.student_logits, out.teacher_logits, self.options.temperature)

    # -- per epoch ---------------------------------------------------------------------------

    def epoch_ended(self, report: kdhub.EpochReport) -> kdhub.EpochAction:
        ctx = self._require_setup()
        epoch = report.epoch
        if report.class_losses is None:
            raise kdhub.KdhubError(
                "tllm: the engine gave no per-class validation losses (class_losses); "
                "the policy needs a validation split (data.val_fraction > 0)"
            )
        losses = report.class_losses.detach().double().cpu().reshape(-1).tolist()
        if len(losses) != ctx.num_classes:
            raise kdhub.KdhubError(f"tllm: class_losses has {len(losses)} entries, expected {ctx.num_classes}")
        self.curves[epoch] = losses
        log = report.log
        self._log_once(log, epoch)
        newly = self.decide(epoch)
        log.metrics({"tllm/stopped_classes": float(len(self.stopped))}, step=epoch)
        if newly:
            self._rebuild_plan()
            if len(self.stopped) == ctx.num_classes and "all" not in self._warned:
                self._warned.add("all")
                warnings.warn(
                    f"tllm: every class is stopped at epoch {epoch}; only cross-entropy and the "
                    "replacement loss are left (limit it with max_stopped_fraction)",
                    stacklevel=2,
                )
        if newly or epoch >= ctx.epochs:
            self._log_tables(log)
        if epoch >= ctx.epochs:
            log.figure("tllm_curves", self.figure())
        return kdhub.EpochAction()

    def decide(self, epoch: int) -> list[int]:
        """Stop the classes whose curve stagnated over the window ending at ``epoch``; returns them."""
        ctx = self._require_setup()
        first = self.start_epoch + self.window_epochs
        if epoch < first or (self.options.mode == "fixed" and epoch != first):
            return []
        if self.end_epoch is not None and epoch > self.end_epoch:
            return []
        room = self.max_stopped - len(self.stopped)
        if room <= 0:
            return []
        before, now = self.curves.get(epoch - self.window_epochs), self.curves.get(epoch)
        if before is None or now is None:
            return []
        skip = set(self.unvalidated) | set(self.stopped)
        candidates = []
        for m in range(ctx.num_classes):
            if m in skip or math.isnan(before[m]) or math.isnan(now[m]):
                continue
            drop = before[m] - now[m]
            if drop <= self.options.eta:
                candidates.append((drop, m))
        newly = sorted(m for _, m in sorted(candidates)[:room])
        for m in newly:
            self.stopped[m] = epoch
        return newly

    @property
    def stopped_classes(self) -> list[int]:
        return sorted(self.stopped)

    def _require_setup(self) -> kdhub.PolicyContext:
        if self.ctx is None:
            raise kdhub.KdhubError("tllm: setup(ctx) must be called before use")
        return self.ctx

    def _log_once(self, log: kdhub.RunLog, epoch: int) -> None:
        if "params" not in self._warned:
            self._warned.add("params")
            log.params(
                {
                    "tllm/start_epoch": self.start_epoch,
                    "tllm/window_epochs": self.window_epochs,
                    "tllm/end_epoch": self.end_epoch if self.end_epoch is not None else "none",
                    "tllm/max_stopped": self.max_stopped,
                    "tllm/curve_loss": self._curve_source or "methods",
                }
            )
        if "unvalidated" not in self._warned:
            self._warned.add("unvalidated")
            if not self.unvalidated and self.ctx is not None and self.ctx.validation_class_counts is None:
                self.unvalidated = [m for m, v in enumerate(self.curves[epoch]) if math.isnan(v)]
            if self.unvalidated:
                names = ", ".join(self._class_name(m) for m in self.unvalidated)
                message = f"tllm: classes with no validation sample are never stopped: {names}"
                log.text("tllm_unvalidated_classes.txt", message)
                warnings.warn(message, stacklevel=3)

    def _class_name(self, m: int) -> str:
        names = self.ctx.class_names if self.ctx is not None else []
        return names[m] if m < len(names) else str(m)

    def _log_tables(self, log: kdhub.RunLog) -> None:
        ctx = self._require_setup()
        epochs = sorted(self.curves)
        curves: kdhub.Table = {"epoch": epochs}
        for m in range(ctx.num_classes):
            curves[str(m)] = [self.curves[e][m] for e in epochs]
        log.table("tllm_curves", curves)
        stopped = self.stopped_classes
        log.table(
            "tllm_stopped",
            {
                "class": stopped,
                "name": [self._class_name(m) for m in stopped],
                "stopped_epoch": [self.stopped[m] for m in stopped],
            },
        )

    def figure(self) -> Any:
        """The teaching curves, stopped classes in colour with their stop epoch marked."""
        ctx = self._require_setup()
        epochs = sorted(self.curves)
        fig, (ax,) = new_figure(7, 4)
        for m in range(ctx.num_classes):
            ys = [self.curves[e][m] for e in epochs]
            if m in self.stopped:
                (line,) = ax.plot(
                    epochs, ys, linewidth=1.5, label=f"{self._class_name(m)} (stopped @{self.stopped[m]})"
                )
                at = self.stopped[m]
                if at in self.curves:
                    ax.plot([at], [self.curves[at][m]], "o", color=line.get_color())
            else:
                ax.plot(epochs, ys, color="0.75", linewidth=0.7)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation distillation loss")
        ax.set_title(f"TLLM teaching curves: {len(self.stopped)} of {ctx.num_classes} classes stopped")
        if 0 < len(self.stopped) <= 20:
            ax.legend(fontsize="small")
        return fig

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "curves": [[e, list(v)] for e, v in sorted(self.curves.items())],
            "stopped": [[m, e] for m, e in sorted(self.stopped.items())],
            "unvalidated": list(self.unvalidated),
            "logged": sorted(self._warned),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curves = {int(e): [float(x) for x in v] for e, v in state.get("curves", [])}
        self.stopped = {int(m): int(e) for m, e in state.get("stopped", [])}
        self._warned = set(state.get("logged", []))
        if state.get("unvalidated"):
            self.unvalidated = [int(m) for m in state["unvalidated"]]
        self._rebuild_plan()


def _kd_per_sample(student: Tensor, teacher: Tensor | None, temperature: float) -> Tensor:
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) per sample, from log-softmax on both sides."""
    if teacher is None:
        raise kdhub.KdhubError("tllm: the teaching curve needs the teacher's logits")
    return kl_per_sample(student, teacher, temperature) * (temperature * temperature)
