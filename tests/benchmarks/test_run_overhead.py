"""benchmarks/run_overhead.py charges each step of a run to its item (not to "other")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "run_overhead.py"


def _items(table: str, variant_column: int) -> dict[str, float]:
    """The CPU seconds of each item of the itemised table (``wall / CPU`` cells)."""
    items = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > variant_column and re.fullmatch(r"[\d.]+ / [\d.]+", cells[variant_column]):
            items[cells[0]] = float(cells[variant_column].split(" / ")[1])
    return items


def test_the_benchmark_itemises_a_real_run_with_its_model(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--repeats", "1", "--variants", "model,bare"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "| wall − bare, s |" in done.stdout
    items = _items(done.stdout, 1)
    assert set(items) >= {"imports", "store open", "training", "model logging", "dataset inputs, description"}
    # model logging (torch.export, the MLflow model files) is its own item, never lost in "other"
    assert items["model logging"] > 0.05
    assert items["model logging"] > items["cli, config, other"]
    assert items["dataset inputs, description"] > 0
