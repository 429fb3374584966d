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
    return results


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
