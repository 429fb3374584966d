"""``kdhub run --dry-run``: build everything a run needs, print the resolved plan, train nothing."""

from __future__ import annotations

import warnings
from typing import Any

import yaml

from kdhub.contract.config import RunConfig
from kdhub.engine.loop import Trainer

__all__ = ["describe_run", "format_plan"]


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def describe_run(config: RunConfig) -> dict[str, Any]:
    """The resolved plan of a run: every plugin with its options (defaults filled in), the data splits,
    model sizes and what the policy resolves (e.g. TLLM's S, K, eta and cap), plus any warnings.

    Builds the run exactly as training would (data, models, teacher weights, methods' setup, the
    policy and the metrics), so a config that passes here fails in training only for runtime reasons.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(config)
    with trainer:  # close() removes the run's temporary folder
        options = trainer.options
        data = trainer.data
        epochs, classes = config.epochs, trainer.num_classes
        plan: dict[str, Any] = {
            "seed": config.seed,
            "epochs": epochs,
            "device": str(trainer.device),
            "data": {
                "name": config.data.name,
                "options": options["data"].model_dump(mode="json"),
                "classes": classes,
                "train": data.size("train"),
                "val": data.size("val") if data.has("val") else 0,
                "holdout": data.size("holdout") if data.has("holdout") else 0,
                "test": data.size("test"),
                "batch_size": config.data.batch_size,
                "steps_per_epoch": trainer.steps_per_epoch,
            },
            "student": {
                "name": config.student.name,
                "options": options["student"].model_dump(mode="json"),
                "parameters": _count(trainer.student),
            },
        }
        if config.teacher is not None:
            plan["teacher"] = {
                "name": config.teacher.name,
                "options": options["teacher"].model_dump(mode="json"),
                "weights": config.teacher.weights or "none (random initialisation)",
                "parameters": _count(trainer.teacher),
            }
        plan["ce_weight"] = config.ce_weight
        plan["methods"] = [
            {"name": t.key, "weight": t.weight, "options": options[f"methods.{i}"].model_dump(mode="json")}
            for i, t in enumerate(trainer.teaching)
        ]
        plan["policy"] = {
            "name": config.policy.name,
            "options": options["policy"].model_dump(mode="json"),
            "resolved": trainer.policy.describe(epochs, classes),
        }
        plan["metrics"] = [
            {
                "name": ref.name,
                "split": ref.split,
                "every": ref.every,
                "at": list(ref.at),
                "options": options[f"metrics.{i}"].model_dump(mode="json"),
            }
            for i, ref in enumerate(config.metrics)
        ]
        plan["optim"] = config.optim.model_dump(mode="json")
        plan["schedule"] = config.schedule.model_dump(mode="json")
        plan["tracking"] = config.tracking.model_dump(mode="json")
        # what the config's plugins warn about, not libraries' deprecation notices
        notes = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
        plan["warnings"] = list(dict.fromkeys(str(w.message) for w in notes))
        return plan


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as YAML under a one-line header (readable, and parseable by scripts)."""
    body = yaml.safe_dump(plan, sort_keys=False, allow_unicode=True, width=110)
    return "# kdhub run --dry-run: the resolved plan; nothing was trained or logged\n" + body
