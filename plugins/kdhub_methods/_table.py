"""Generate ``docs/methods.md`` from the registry, so the method reference cannot drift.

python -m kdhub_methods._table > docs/methods.md
"""

from __future__ import annotations

import sys

import kdhub
from kdhub.registry.reference import capabilities, markdown_options

COMMAND = "python -m kdhub_methods._table > docs/methods.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _builtin_methods() -> list[type[kdhub.Method]]:
    classes = [kdhub.get_plugin("method", name) for name in kdhub.list_plugins("method")]
    return [c for c in classes if c.__module__.split(".")[0] == __package__]


def _kind(facts: dict) -> str:
    if not facts["needs_teacher"]:
        return "teacher-free"
    parts = [p for p, on in (("output", facts["output_based"]), ("feature", bool(facts["feature_roles"]))) if on]
    return " + ".join(parts) or "other"


def _defaults(cls: type[kdhub.Method]) -> str:
    fields = cls.Options.model_fields
    return "<br>".join(f"`{name}={field.default!r}`" for name, field in fields.items()) or "—"


def methods_markdown() -> str:
    """The Markdown reference of every built-in method: one summary table, then each method's options."""
    methods = _builtin_methods()
    lines = [
        "# Distillation methods",
        "",
        f"<!-- Generated from the plugin registry by `{COMMAND}`; do not edit by hand. -->",
        "",
        "Every built-in method, as registered. *kind*: `output` compares logits, `feature` compares",
        "intermediate features (the *roles* a model must name), `teacher-free` needs no teacher.",
        "*loss*: `per-sample` losses are reduced by the engine under the policy's class mask;",
        "`batch-relational` losses are computed on the taught samples only. *weight* is used when the",
        "config gives none. The full reference (formula, recipe, config snippet) is each method's docstring:",
        '`kdhub.get_plugin("method", NAME).__doc__`.',
        "",
        "| method | summary | kind | loss | roles | weight | options (defaults) | paper |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for cls in methods:
        facts = capabilities(cls)
        row = [
            f"[`{cls.name}`](#{cls.name})",
            _cell(cls.summary()),
            _kind(facts),
            "per-sample" if cls.per_sample else "batch-relational",
            ", ".join(f"`{r}`" for r in facts["feature_roles"]) or "—",
            f"{cls.default_weight:g}",
            _defaults(cls),
            _cell(cls.paper) or "—",
        ]
        lines.append("| " + " | ".join(row) + " |")
    for cls in methods:
        lines += ["", f"## {cls.name}", "", _cell(cls.summary()), ""]
        lines += markdown_options(cls.Options)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(methods_markdown())
