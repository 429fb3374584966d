"""docs/policies.md carries the generated option table of every built-in policy, up to date."""

from __future__ import annotations

from pathlib import Path

import pytest

import kdhub
from kdhub.registry.reference import update_generated_sections

DOC = Path(__file__).resolve().parents[2] / "docs" / "policies.md"


def test_option_tables_are_up_to_date():
    text = DOC.read_text(encoding="utf-8")
    assert update_generated_sections(text) == text, "stale: run `python -m kdhub.reference policies docs/policies.md`"


@pytest.mark.parametrize("name", [n for n in kdhub.list_plugins("policy") if n != "hello"])
def test_every_builtin_policy_has_a_section_with_its_options(name):
    cls = kdhub.get_plugin("policy", name)
    if not cls.__module__.startswith("kdhub_policies."):
        pytest.skip("not a built-in policy")
    text = DOC.read_text(encoding="utf-8")
    assert f"<!-- options: policy {name} -->" in text
    for option in cls.Options.model_fields:
        assert f"| `{option}` |" in text, option
