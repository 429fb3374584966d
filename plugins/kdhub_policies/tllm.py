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
from kdhub.contract.figures import new_figure
from kdhub.contract.functional import kl_per_sample

FEW_SAMPLES = 20  # fewer validation samples than this in a class: warn that its curve is noisy


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
      ``S + K <= e <= end``; ``mode: fixed``: a single check at ``e = S + K``. An active class ``m``
      is *stagnant* at a check when

      - ``criterion: trend`` (kdhub's default, a departure from the paper): the curve over the
        window ``L_{e-K}[m] .. L_e[m]``, divided by its mean, is fitted by least squares against
        the epoch; ``d_m = -slope * K`` is the fraction of its loss level it lost over the window;
        the fits' residual variance, pooled over the classes, gives the standard error ``se`` of
        every ``d_m``; stagnant iff ``d_m + noise_z * se <= eta``. A noisy per-class mean over a
        few validation images neither stops a class that is still learning nor hides one whose
        loss is flat or rising beyond the noise.
      - ``criterion: paper``: ``L_{e-K}[m] - L_e[m] <= eta`` (its loss fell by no more than
        ``eta``, in loss units, or rose).

      In sliding mode a class is stopped after ``patience`` consecutive stagnant checks (one noisy
      spike is not stagnation); stopped classes stay stopped; a NaN in the window skips that class
      for that epoch (and breaks its streak); a class with no validation sample is never stopped.
      At most ``floor(max_stopped_fraction * C)`` classes are stopped; when an epoch has more
      candidates than room, the most stagnant (smallest score) go first, ties by class index.
    - **Loss** with stopped set ``D`` (sample ``i`` taught iff ``y_i`` not in ``D``)::

          L = w_ce * CE(z_s, y) + w_kd * (1/B) * sum_i [1{y_i not in D} l_i + 1{y_i in D} l_LS,i]

      where ``l_LS`` is the label-smoothed cross-entropy (``alpha = smoothing``, T = 1, no T^2)
      standing in for *output-based* methods (``replacement: label_smoothing``); feature methods
      are only dropped for stopped classes, batch-relational ones use the taught samples only.
      Cross-entropy keeps every class; the teacher's distribution is not renormalised.

    The paper publishes no S, K or eta. kdhub's defaults work for any run length: S = 20 % of the
    epochs (S >= 1, there is no L_0), K = 10 % but at least ``min_window`` = 3 epochs (an integer
    window is taken as given), the trend criterion with eta = 0 and noise_z = 1, patience 2, no new
    stop after 80 % of the run (every curve flattens as the learning rate decays), at most half of
    the classes; setup warns when the window is under 3 epochs, when no decision can happen, and
    (without the noise margin) when a class has fewer than 20 validation samples.
    ``describe(epochs, classes)`` gives the resolved values (``kdhub run --dry-run`` prints them;
    they are logged as params). The paper tunes eta on a second held-out split. Label smoothing
    uses alpha = 0.1 as in its appendix.
    The paper's formulation: ``criterion: paper, patience: 1, end: null, max_stopped_fraction: 1``.

    Logged: ``tllm/stopped_classes`` per epoch; the tables ``tllm_curves`` (epoch x class) and
    ``tllm_stopped`` (class, name, stopped_epoch, the drop and noise margin that stopped it),
    written when the stopped set changes and after the last epoch; the figure ``tllm_curves``
    (stopped classes highlighted) after the last epoch; the setup warnings (``tllm_warnings.txt``)::

        ce_weight: 0.1
        methods: [{name: kd, weight: 0.9, options: {temperature: 4}}]
        data: {name: cifar100, val_fraction: 0.05}
        policy: {name: tllm, options: {criterion: trend, eta: 0.0}}
    """

    name = "tllm"
    wants_class_losses = True
    needs_validation = True
    needs_methods = True

    class Options(kdhub.Options):
        criterion: Literal["trend", "paper"] = Field(
            "trend",
            description="trend: least-squares slope over the window, relative to the class's loss, with a noise"
            " margin; paper: the raw drop L_{e-K} - L_e <= eta",
        )
        mode: Literal["sliding", "fixed"] = Field(
            "sliding", description="sliding: check every epoch >= S+K; fixed: one check at S+K"
        )
        start: kdhub.EpochOrFraction = Field(
            0.2, description="S: the first window starts at this epoch (int; 0 reads as 1) or fraction of the run"
        )
        window: kdhub.EpochOrFraction = Field(
            0.1,
            description="K: window length in epochs (int, taken as given) or as a fraction of the run (at least"
            " min_window epochs)",
        )
        min_window: int = Field(
            3, ge=1, le=1000, description="the least window a fractional window resolves to (K + 1 curve points)"
        )
        eta: kdhub.FiniteFloat = Field(
            0.0,
            ge=0,
            le=1e6,
            description="stop a class when its loss fell by <= eta over the window (trend: a fraction of the"
            " class's mean loss in the window; paper: in loss units)",
        )
        noise_z: kdhub.FiniteFloat = Field(
            1.0,
            ge=0,
            le=10,
            description="trend: stop only if the fitted drop plus noise_z standard errors is <= eta (0: the fit alone)",
        )
        patience: int = Field(
            2,
            ge=1,
            le=1000,
            description="sliding mode: a class stops after looking stagnant at this many consecutive checks",
        )
        end: kdhub.EpochOrFraction | None = Field(
            0.8, description="no new stops after this epoch (int) or fraction of the run (None = never)"
        )
        max_stopped_fraction: kdhub.FiniteFloat = Field(
            0.5, ge=0, le=1, description="at most floor(fraction * classes) classes are ever stopped"
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

    options: Options

    def __init__(self, options: kdhub.Options | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.curves: dict[int, list[float]] = {}
        self.stopped: dict[int, int] = {}
        self._warned: set[str] = set()
        self._curve_source: str | None = None
        self.unvalidated: list[int] = []
        self.setup_notes: list[str] = []
        self.decisions: dict[int, dict[str, float]] = {}  # class -> the statistics that stopped it
        self.streak: dict[int, int] = {}  # class -> consecutive checks at which it looked stagnant
        self._plan = kdhub.StepPlan()
        self.ctx: kdhub.PolicyContext | None = None  # type: ignore[assignment]  # set by setup()

    # -- run start -------------------------------------------------------------------------

    def resolve(self, epochs: int, num_classes: int) -> dict[str, Any]:
        """S, K, end, the first decision epoch and the cap for a run of ``epochs`` and ``num_classes``."""
        o = self.options
        window = kdhub.resolve_epoch(o.window, epochs, minimum=1)
        if isinstance(o.window, float) and not o.window.is_integer():
            window = max(window, o.min_window)
        start = kdhub.resolve_epoch(o.start, epochs, minimum=1)
        end = None if o.end is None else kdhub.resolve_epoch(o.end, epochs)
        return {
            "start": start,
            "window": window,
            "end": end,
            "first": start + window,
            "max_stopped": math.floor(o.max_stopped_fraction * num_classes + 1e-9),
        }

    def describe(self, epochs: int, num_classes: int) -> dict[str, Any]:
        r, o = self.resolve(epochs, num_classes), self.options
        last = min(epochs, r["end"]) if r["end"] is not None else epochs
        checks = 0 if r["first"] > last else 1 if o.mode == "fixed" else last - r["first"] + 1
        return {
            "tllm/criterion": o.criterion,
            "tllm/mode": o.mode,
            "tllm/start_epoch": r["start"],
            "tllm/window_epochs": r["window"],
            "tllm/first_decision_epoch": r["first"],
            "tllm/end_epoch": r["end"] if r["end"] is not None else "none",
            "tllm/decision_epochs": checks,
            "tllm/eta": o.eta,
            "tllm/eta_unit": "fraction of the class's loss" if o.criterion == "trend" else "loss",
            "tllm/noise_z": o.noise_z if o.criterion == "trend" else "n/a",
            "tllm/patience": o.patience if o.mode == "sliding" else 1,
            "tllm/max_stopped": r["max_stopped"],
        }

    def problems(self, epochs: int, num_classes: int) -> list[str]:
        """Why the resolved schedule cannot judge stagnation well (each becomes a warning at setup)."""
        r = self.resolve(epochs, num_classes)
        out = []
        if r["window"] < 3:
            out.append(
                f"tllm: the window is {r['window']} epoch(s) ({r['window'] + 1} curve points): too short to tell a"
                " stagnating class from validation noise; use window >= 3 (or a fraction, which resolves to at"
                " least min_window)"
            )
        if r["first"] > epochs:
            out.append(
                f"tllm: the first decision (epoch S+K = {r['first']}) is after the last epoch ({epochs}); "
                "no class will be stopped"
            )
        elif r["end"] is not None and r["first"] > r["end"]:
            out.append(
                f"tllm: the first decision (epoch {r['first']}) is after end ({r['end']}); no class will be stopped"
            )
        if r["max_stopped"] == 0:
            out.append("tllm: max_stopped_fraction allows no stopped class")
        return out

    def setup(self, ctx: kdhub.PolicyContext) -> None:
        super().setup(ctx)
        if not ctx.method_names:
            raise kdhub.ConfigError("policy: tllm selects the classes a teacher teaches; the run has no methods")
        r = self.resolve(ctx.epochs, ctx.num_classes)
        self.setup_notes = []
        self.start_epoch, self.window_epochs, self.end_epoch = r["start"], r["window"], r["end"]
        self.max_stopped = r["max_stopped"]
        counts = ctx.validation_class_counts
        if counts is not None:
            self.unvalidated = [int(m) for m in (counts.cpu() == 0).nonzero().flatten()]
            present = counts.cpu()[counts.cpu() > 0]
            guarded = self.options.criterion == "trend" and self.options.noise_z > 0
            if len(present) and int(present.min()) < FEW_SAMPLES and not guarded:
                self.setup_notes.append(
                    f"tllm: the validation split has only {int(present.min())} sample(s) of some class; per-class"
                    " losses that noisy need the trend criterion's noise margin (criterion: trend, noise_z > 0)"
                    " or a larger data.val_fraction"
                )
        for problem in self.problems(ctx.epochs, ctx.num_classes):
            self.setup_notes.append(problem)
        for note in self.setup_notes:
            warnings.warn(note, stacklevel=2)
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
        self._require_setup()
        first = self.start_epoch + self.window_epochs
        if epoch < first or (self.options.mode == "fixed" and epoch != first):
            return []
        if self.end_epoch is not None and epoch > self.end_epoch:
            return []
        room = self.max_stopped - len(self.stopped)
        if room <= 0:
            return []
        scores = self._paper_scores(epoch) if self.options.criterion == "paper" else self._trend_scores(epoch)
        skip = set(self.unvalidated) | set(self.stopped)
        patience = self.options.patience if self.options.mode == "sliding" else 1
        candidates = []
        for m, score in scores.items():
            if m in skip:
                continue
            stagnant = score["score"] <= self.options.eta
            self.streak[m] = self.streak.get(m, 0) + 1 if stagnant else 0
            if stagnant and self.streak[m] >= patience:
                candidates.append((score["score"], m))
        for m in set(self.streak) - set(scores):
            self.streak[m] = 0  # no finite window this epoch: the streak is broken
        newly = sorted(m for _, m in sorted(candidates)[:room])
        for m in newly:
            self.stopped[m] = epoch
            self.decisions[m] = scores[m]
        return newly

    def _paper_scores(self, epoch: int) -> dict[int, dict[str, float]]:
        """``L_{e-K}[m] - L_e[m]`` for the classes with both ends finite (the paper's criterion)."""
        before, now = self.curves.get(epoch - self.window_epochs), self.curves.get(epoch)
        if before is None or now is None:
            return {}
        out = {}
        for m in range(len(now)):
            if not (math.isnan(before[m]) or math.isnan(now[m])):
                drop = before[m] - now[m]
                out[m] = {"score": drop, "drop": drop, "margin": 0.0}
        return out

    def _trend_scores(self, epoch: int) -> dict[int, dict[str, float]]:
        """Relative fitted drop plus its noise margin, for the classes with a finite window.

        Over the K + 1 epochs ``e-K .. e``, each class's curve divided by its mean over the window is
        fitted by least squares; ``drop = -slope * K`` is the fraction of its loss level it lost over
        the window. The residual variance is pooled over the classes (a class's own K - 1 degrees of
        freedom are too few), giving the standard error ``se`` of every drop; the score is
        ``drop + noise_z * se``.
        """
        k = self.window_epochs
        rows = [self.curves.get(e) for e in range(epoch - k, epoch + 1)]
        if any(row is None for row in rows):
            return {}
        xs = list(range(k + 1))
        x_mean = k / 2
        sxx = sum((x - x_mean) ** 2 for x in xs)
        fits: dict[int, tuple[float, float]] = {}
        for m in range(len(rows[0])):  # type: ignore[arg-type]  # no None row (above)
            ys = [row[m] for row in rows]  # type: ignore[index]
            if any(math.isnan(y) for y in ys):
                continue
            level = sum(ys) / len(ys)
            if not level > 0:
                continue
            rel = [y / level for y in ys]
            slope = sum((x - x_mean) * (y - 1.0) for x, y in zip(xs, rel, strict=True)) / sxx
            rss = sum((y - (1.0 + slope * (x - x_mean))) ** 2 for x, y in zip(xs, rel, strict=True))
            fits[m] = (-slope * k, rss)
        dof = len(fits) * (k - 1)
        se = math.sqrt(sum(rss for _, rss in fits.values()) / dof / sxx) * k if dof > 0 else 0.0
        margin = self.options.noise_z * se
        return {m: {"score": drop + margin, "drop": drop, "margin": margin} for m, (drop, _) in fits.items()}

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
            ctx = self._require_setup()
            log.params(
                {**self.describe(ctx.epochs, ctx.num_classes), "tllm/curve_loss": self._curve_source or "methods"}
            )
            if self.setup_notes:
                log.text("tllm_warnings.txt", "\n".join(self.setup_notes) + "\n")
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
                "drop": [self.decisions.get(m, {}).get("drop", math.nan) for m in stopped],
                "margin": [self.decisions.get(m, {}).get("margin", math.nan) for m in stopped],
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
            "decisions": [[m, d["score"], d["drop"], d["margin"]] for m, d in sorted(self.decisions.items())],
            "streak": [[m, n] for m, n in sorted(self.streak.items())],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curves = {int(e): [float(x) for x in v] for e, v in state.get("curves", [])}
        self.stopped = {int(m): int(e) for m, e in state.get("stopped", [])}
        self.decisions = {
            int(m): {"score": float(a), "drop": float(b), "margin": float(c)}
            for m, a, b, c in state.get("decisions", [])
        }
        self.streak = {int(m): int(n) for m, n in state.get("streak", [])}
        self._warned = set(state.get("logged", []))
        if state.get("unvalidated"):
            self.unvalidated = [int(m) for m in state["unvalidated"]]
        self._rebuild_plan()


def _kd_per_sample(student: Tensor, teacher: Tensor | None, temperature: float) -> Tensor:
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) per sample, from log-softmax on both sides."""
    if teacher is None:
        raise kdhub.KdhubError("tllm: the teaching curve needs the teacher's logits")
    return kl_per_sample(student, teacher, temperature) * (temperature * temperature)
