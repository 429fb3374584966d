"""The engine's calls at the start and the end of a run: datasets, description, the student as a model."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from kdhub.contract.errors import KdhubError
from kdhub.contract.version import __version__
from kdhub.registry.student import model_checkpoint, network_from_checkpoint
from kdhub.tracking.artifacts import teacher_links
from kdhub.tracking.runinfo import _default_weight, _option_text, model_label
from kdhub.tracking.store import _MAX_TAG, _NOTE_TAG
from kdhub.tracking.tracker import Tracker

if TYPE_CHECKING:
    from kdhub.contract.config import RunConfig


# the description of a run -----------------------------------------------------------------------


def _pct(value: Any) -> str:
    return f"{value:.2f} %" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def run_description(
    config: RunConfig,
    data: dict[str, dict[str, Any]] | None = None,
    metrics: dict[str, float] | None = None,
    *,
    teacher_run: tuple[str, str] | None = None,
    registered: str | None = None,
    teacher_model: str | None = None,
) -> str:
    """The run's description (Markdown): what was distilled into what, with which method, policy and
    data, and (given ``metrics``) the headline result; ``tracking.description`` replaces it.

    ``teacher_run`` is the teacher's (experiment id, run id), linked; ``registered`` is ``NAME/VERSION``;
    ``teacher_model`` the registry version (``NAME/VERSION``) that ``models:/NAME@ALIAS`` weights resolved to.
    """
    if config.tracking.description:
        return config.tracking.description
    student, teacher = model_label(config.student), model_label(config.teacher)
    policy = model_label(config.policy)
    methods = []
    for ref in config.methods:
        weight = ref.weight if ref.weight is not None else _default_weight(ref.name)
        options = "".join(f", {k}={_option_text(v)}" for k, v in ref.options.items())
        methods.append(f"**{ref.name}** (weight {weight:g}{options})")
    if config.teacher is None:
        lines = [f"Trains **{student}** with cross-entropy only (no teacher), policy {policy}."]
    elif not methods:
        lines = [
            f"Trains **{student}** with cross-entropy; teacher **{teacher}** is attached for evaluation only"
            " (no distillation method)."
        ]
    else:
        lines = [
            f"Distils teacher **{teacher}** into student **{student}** with {', '.join(methods)}"
            f" and cross-entropy (weight {config.ce_weight:g}), policy **{policy}**."
        ]
    if metrics:
        result = f"**Result:** test accuracy **{_pct(metrics.get('test/acc_last'))}** after the last epoch"
        result += f" (highest seen {_pct(metrics.get('test/acc_max_seen'))}"
        if "test/acc_at_best_val" in metrics:
            epoch = metrics.get("best_val_epoch")
            at = f" epoch {int(epoch)}" if isinstance(epoch, (int, float)) and math.isfinite(epoch) else ""
            result += f"; {_pct(metrics['test/acc_at_best_val'])} at the best validation{at}"
        result += ")"
        if "test/accuracy/teacher_acc" in metrics:
            result += f"; teacher {_pct(metrics['test/accuracy/teacher_acc'])}"
        lines.append(result + ".")
    if config.teacher is not None and config.teacher.weights:
        where = f"Teacher weights: `{config.teacher.weights}`"
        if teacher_model and f"models:/{teacher_model}" != config.teacher.weights:
            where += f" (registered version `models:/{teacher_model}`)"
        if teacher_run is not None:
            where += f" ([teacher run {teacher_run[1][:8]}](#/experiments/{teacher_run[0]}/runs/{teacher_run[1]}))"
        lines.append(where + ".")
    elif config.teacher is not None:
        lines.append("Teacher weights: none (a randomly initialised teacher).")
    sizes = ""
    if data:
        counts = " / ".join(f"{info['num_samples']:,} {split}" for split, info in data.items())
        info = next(iter(data.values()))
        shape = "×".join(str(v) for v in info["shape"])
        sizes = f" ({counts} images, {shape}, {info['num_classes']} classes)"
    epochs = f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}"
    lines.append(
        f"Data: **{model_label(config.data)}**{sizes}; {epochs}, {config.optim.name} lr"
        f" {config.optim.lr:g}, {config.schedule.name} schedule, seed {config.seed}."
    )
    if registered:
        lines.append(f"Registered as `models:/{registered}`.")
    return "\n\n".join(lines)


# the engine's calls at the start and the end of a run ----------------------------------------------------


def model_name(config: RunConfig) -> str:
    """The name of a run's logged model: ``tracking.model_name``, else ``student`` for a run that distils
    and ``model`` for one trained with labels only (a teacher, a vanilla baseline)."""
    return config.tracking.model_name or ("student" if config.methods else "model")


_REGISTERED = {
    True: "Students distilled with kdhub; each version links its training run, its teacher and its method.",
    False: "Models trained with labels only by kdhub (teachers or vanilla baselines: no distillation);"
    " each version links its training run.",
}
"""The description of a new registered model, by whether its first version distils."""


def _teacher_run(tracker: Tracker, config: RunConfig) -> tuple[str, str] | None:
    if config.teacher is None:
        return None
    run_id = teacher_links(config.teacher.weights, tracker.uri).get("kdhub.teacher_run")
    if not run_id:
        return None
    try:
        return tracker.client.get_run(run_id).info.experiment_id, run_id
    except Exception:
        return None


def _teacher_model(tracker: Tracker, config: RunConfig) -> str | None:
    """The registry version (``NAME/VERSION``) the run's ``models:/`` teacher weights resolved to at its start."""
    if config.teacher is None or not (config.teacher.weights or "").startswith("models:/"):
        return None
    try:
        model = tracker.client.get_run(tracker.run_id).data.tags.get("kdhub.teacher_model", "")
    except Exception:
        return None
    return model if "/" in model else None


def _descriptions(data: Any) -> dict[str, dict[str, Any]]:
    return {split: data.describe(split) for split in ("train", "val", "test") if data.has(split)}


def log_run_start(tracker: Tracker, config: RunConfig, data: Any) -> None:
    """After the run is created: the splits as dataset inputs, the description, system metrics if asked."""
    descriptions = _descriptions(data)
    tracker.datasets(descriptions)
    if not tracker.resumed:
        tracker.describe(
            run_description(
                config,
                descriptions,
                teacher_run=_teacher_run(tracker, config),
                teacher_model=_teacher_model(tracker, config),
            )
        )
    if config.tracking.system_metrics:
        tracker.system_metrics()


def log_run_end(tracker: Tracker, config: RunConfig, data: Any, result: Any) -> dict[str, str]:
    """After training: the student as an MLflow model (and registry version), then the final description.

    Returns ``{"model_id": ..., "registered": "NAME/VERSION"}`` (what was done).
    """
    done: dict[str, str] = {}
    metrics = dict(result.metrics)
    if config.tracking.log_model and result.student is not None:
        checkpoint = model_checkpoint(result.student, config, data)
        net = network_from_checkpoint(checkpoint)
        example = data.example(2).detach().float().cpu().numpy()
        tags = {
            "student": model_label(config.student),
            "teacher": model_label(config.teacher),
            "method": ",".join(m.name for m in config.methods) or "none",
            "policy": config.policy.name,
            "dataset": config.data.name,
            "kdhub.version": __version__,
        }
        metadata = {"kdhub": {**checkpoint["model_spec"], "run_id": tracker.run_id, "kdhub_version": __version__}}
        try:
            model_id = tracker.log_model(
                net,
                example,
                checkpoint=checkpoint,
                metadata=metadata,
                tags=tags,
                step=config.epochs,
                name=model_name(config),
            )
        except Exception as err:  # torch.export cannot trace every model (data-dependent control flow)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise KdhubError(
                f"tracking.log_model: the student {model_label(config.student)} could not be logged as an MLflow"
                f" model ({type(err).__name__}: {first}); its checkpoints are logged: resume with"
                f" --set tracking.log_model=false to finish the run without it"
            ) from err
        done["model_id"] = model_id
        tracker.tags({"kdhub.model": f"models:/{model_id}"})
        if config.tracking.register:
            acc = metrics.get("test/acc_last", math.nan)
            version_tags = {**tags, "test_acc": f"{acc:.2f}", "kdhub.run": str(tracker.run_id)}
            description = run_description(
                config,
                _descriptions(data),
                metrics,
                teacher_run=_teacher_run(tracker, config),
                teacher_model=_teacher_model(tracker, config),
            )
            version = tracker.register_model(
                model_id, config.tracking.register, version_tags, description, _REGISTERED[bool(config.methods)]
            )
            done["registered"] = f"{config.tracking.register}/{version}"
            tracker.tags({"kdhub.registered_model": done["registered"]})
    text = run_description(  # tracking.description when set
        config,
        _descriptions(data),
        metrics,
        teacher_run=_teacher_run(tracker, config),
        teacher_model=_teacher_model(tracker, config),
        registered=done.get("registered"),
    )
    tracker.describe(text)
    if "model_id" in done:
        tracker.client.set_logged_model_tags(done["model_id"], {_NOTE_TAG: text[:_MAX_TAG]})
    return done
