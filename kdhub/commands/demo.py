"""``kdhub demo``: teacher, vanilla student and KD student on the embedded digits data, compared per class."""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

import yaml

from kdhub.contract.config_loading import parse_config
from kdhub.contract.tables import PER_CLASS_ACCURACY
from kdhub.engine.loop import RunResult
from kdhub.engine.runner import run
from kdhub.tracking import load_table, tracking_uri

__all__ = ["demo", "demo_configs"]


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
    configs = demo_configs(epochs, tracking_uri)
    results: dict[str, RunResult] = {}
    for name, config in configs.items():
        if name == "kd":
            config["teacher"]["weights"] = f"runs:/{results['teacher'].run_id}/checkpoints/final.pt"
        print(f"== {name}: {config['tracking']['run_name']}")
        results[name] = run(parse_config(config))
    uri = configs["teacher"]["tracking"]["uri"]
    tables = {name: load_table(str(r.run_id), PER_CLASS_ACCURACY.key("test"), uri) for name, r in results.items()}
    print(report(tables, results))
    print(f"\nAll three runs are in the MLflow store {uri} (experiment 'kdhub-demo'). Open the UI with:")
    print(f"  mlflow ui --backend-store-uri {uri}")
    print(load_hint(str(results["kd"].run_id), uri))
    return results


def load_hint(run_id: str, uri: str) -> str:
    """How to load the registered KD student with ``mlflow.pyfunc`` and feed it raw digits (docs/mlflow.md)."""
    from kdhub.tracking import run_info

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


def report(tables: dict[str, dict[str, list[Any]]], results: dict[str, RunResult]) -> str:
    """Per-class test accuracy side by side, and the classes KD hurt (accuracy below vanilla)."""
    names = tables["teacher"]["name"]
    lines = [f"\n{'class':<8}{'teacher':>9}{'vanilla':>9}{'KD':>9}{'KD-van.':>9}"]
    hurt = []
    for i, cls in enumerate(names):
        t, v, k = (tables[n]["student"][i] for n in ("teacher", "vanilla", "kd"))
        delta = k - v
        if not math.isnan(delta) and delta < 0:
            hurt.append(str(cls))
        lines.append(f"{cls!s:<8}{t:>9.1f}{v:>9.1f}{k:>9.1f}{delta:>+9.1f}")
    overall = [results[n].last_acc for n in ("teacher", "vanilla", "kd")]
    lines.append(
        f"{'overall':<8}{overall[0]:>9.1f}{overall[1]:>9.1f}{overall[2]:>9.1f}{overall[2] - overall[1]:>+9.1f}"
    )
    hurt_list = ", ".join(hurt) if hurt else "none"
    lines.append(f"\nKD hurt {len(hurt)} class(es): {hurt_list} (test accuracy below the vanilla student)")
    return "\n".join(lines)
