"""docs/methods.md is generated from the registry; regenerate it when this fails."""

from __future__ import annotations

from pathlib import Path

import kdhub
from kdhub_methods._table import COMMAND, methods_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "methods.md"


def test_doc_matches_registry() -> None:
    assert DOC.read_text(encoding="utf-8") == methods_markdown(), f"docs/methods.md is stale: run `{COMMAND}`"


def test_table_lists_every_builtin_method_with_its_facts() -> None:
    text = methods_markdown()
    builtin = [
        n for n in kdhub.list_plugins("method") if kdhub.get_plugin("method", n).__module__.startswith("kdhub_methods.")
    ]
    for name in builtin:
        assert f"[`{name}`](#{name})" in text
        assert f"\n## {name}\n" in text
    dkd_row = next(line for line in text.splitlines() if line.startswith("| [`dkd`]"))
    assert "| output | per-sample | — | 1 |" in dkd_row
    assert "`beta=8.0`" in dkd_row
    dist_row = next(line for line in text.splitlines() if line.startswith("| [`dist`]"))
    assert "batch-relational" in dist_row
    ls_row = next(line for line in text.splitlines() if line.startswith("| [`label_smoothing`]"))
    assert "teacher-free" in ls_row
    assert "| `temperature` | float | `4.0` | >= 0.01, <= 100 | softmax temperature T |" in text
