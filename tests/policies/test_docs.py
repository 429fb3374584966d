"""docs/policies.md documents every option of every built-in policy with its default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import kdhub

DOC = Path(__file__).resolve().parents[2] / "docs" / "policies.md"
POLICIES = ["constant", "tllm", "eskd", "annealing", "loss_switch"]


def section(text: str, name: str) -> str:
    match = re.search(rf"^## {re.escape(name)}\b.*?(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"docs/policies.md has no section for {name}"
    return match.group(0)


@pytest.mark.parametrize("name", POLICIES)
def test_every_option_is_documented(name):
    body = section(DOC.read_text(), name)
    options = kdhub.get_plugin("policy", name).Options.model_fields
    for key, field in options.items():
        row = re.search(rf"^\| `{key}` \| ([^|]+) \|", body, flags=re.M)
        assert row, f"{name}: option {key!r} is missing from its options table"
        default = field.default
        shown = row.group(1).strip().strip("`")
        if isinstance(default, bool):
            assert shown == str(default).lower()
        elif default is None:
            assert shown == "none"
        elif isinstance(default, float) and abs(default - 2 / 3) < 1e-12:
            assert shown == "2/3"
        else:
            assert shown == str(default), f"{name}.{key}: documented {shown!r}, default {default!r}"
