"""``kdhub demo``: a teacher, and vanilla and KD students over a few seeds on the embedded digits data, compared
per class with seed statistics."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from kdhub.commands.demo_report import noise_report
from kdhub.contract.config_loading import parse_config
from kdhub.contract.tables import PER_CLASS_ACCURACY
from kdhub.engine.loop import RunResult
from kdhub.engine.runner import run
from kdhub.registry.loading import get_registry
from kdhub.tracking import VIEW_NAME, accuracy_view_url, load_table, run_info, tracking_uri

__all__ = ["demo", "demo_configs", "demo_seeds"]


def demo_configs(epochs: int | None = None, uri: str | None = None) -> dict[str, dict[str, Any]]:
    """The demo's three run configs (teacher, vanilla, kd) as dicts; the kd teacher's weights are set later."""
    spec = yaml.safe_load(resources.files("kdhub.commands").joinpath("demo.yaml").read_text())
    configs = {}
    for name, overrides in spec["runs"].items():
        config = {**spec["common"], **overrides}
        config["tracking"] = {**config["tracking"], "run_name": f"demo-{name}", "uri": tracking_uri(uri)}
        if epochs is not None:
            config["epochs"] = epochs
        configs[name] = config
    return configs


def demo(epochs: int | None = None, tracking_uri: str | None = None) -> dict[str, RunResult]:
    """Train the teacher once, then the vanilla and the KD student for each of the demo's seeds, and print
    the per-class comparison with its seed statistics (:func:`kdhub.commands.demo_report.noise_report`)."""
    configs = demo_configs(epochs, tracking_uri)
    seeds = demo_seeds()
    results: dict[str, RunResult] = {}
    for name, config in configs.items():
        for seed in [None] if name == "teacher" else seeds:
            key = name if seed is None else f"{name}-s{seed}"
            run_config = {**config, "tracking": {**config["tracking"], "run_name": f"demo-{key}"}}
            if seed is not None:
                run_config["seed"] = seed
            if seed not in (None, seeds[0]):  # one registered KD student: the first seed's
                run_config["tracking"].pop("register", None)
            if name == "kd":
                teacher = f"runs:/{results['teacher'].run_id}/checkpoints/final.pt"
                run_config["teacher"] = {**config["teacher"], "weights": teacher}
            print(f"== {key}: {run_config['tracking']['run_name']}")
            results[key] = run(parse_config(run_config))
    uri = configs["teacher"]["tracking"]["uri"]
    comparer: Any = get_registry().create("command", "compare")  # kdhub compare, the analysis plugin
    comparison = comparer.compare(
        [str(results[f"vanilla-s{s}"].run_id) for s in seeds],
        [str(results[f"kd-s{s}"].run_id) for s in seeds],
        uri=uri,
        log=False,
    )
    table = load_table(str(results["teacher"].run_id), PER_CLASS_ACCURACY.key("test"), uri)
    print(noise_report(comparison, table["student"], table["count"], results["teacher"].last_acc))
    print(f"\nAll {len(results)} runs are in the MLflow store {uri} (experiment 'kdhub-demo'). Open the UI with:")
    print(f"  mlflow ui --backend-store-uri {uri}")
    experiment_id = run_info(str(results["teacher"].run_id), uri)["experiment_id"]
    print(f"and the runs with their accuracy columns (Views > {VIEW_NAME} above the run list) at:")
    print(f"  {accuracy_view_url(experiment_id)}")
    print(f"or compare them yourself: kdhub compare --baseline <vanilla run ids> <kd run ids> --tracking-uri {uri}")
    print(load_hint(str(results[f"kd-s{seeds[0]}"].run_id), uri))
    return results


def load_hint(run_id: str, uri: str) -> str:
    """How to load the registered KD student with ``mlflow.pyfunc`` and feed it raw digits (docs/mlflow.md)."""
    registered = run_info(run_id, uri)["tags"].get("kdhub.registered_model")
    if not registered:
        return ""
    return "\n".join(
        [
            f"\nThe KD student is registered as models:/{registered}. Load it and classify raw digits with:",
            "  import mlflow, numpy as np",
            "  from sklearn.datasets import load_digits",
            f'  mlflow.set_tracking_uri("{uri}")',
            f'  model = mlflow.pyfunc.load_model("models:/{registered}")',
            '  norm = model.metadata.metadata["kdhub"]["normalization"]',
            "  pixels = np.round(load_digits().images * 255 / 16) / 255  # digits are 0..16; the model saw uint8 / 255",
            '  x = ((pixels - norm["mean"][0]) / norm["std"][0])[:, None].astype(np.float32)  # [N, 1, 8, 8] float32',
            "  print(model.predict(x).argmax(1)[:10])",
        ]
    )


def demo_seeds() -> list[int]:
    """The seeds of the demo's students (the teacher trains once)."""
    spec = yaml.safe_load(resources.files("kdhub.commands").joinpath("demo.yaml").read_text())
    return [int(s) for s in spec["seeds"]]
