"""Reference text from the code: option tables and plugin capabilities.

One helper for every place that documents options — ``kdhub show``, ``docs/config.md``,
``docs/methods.md`` and the option tables of ``docs/policies.md`` — so they cannot disagree.

python -m kdhub.registry.reference policies docs/policies.md   # rewrite the generated tables in place
python -m kdhub.registry.reference config > docs/config.md       # the run-config reference
"""

from __future__ import annotations

import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from kdhub.contract.config import PluginRef, RunConfig
from kdhub.contract.validation import inner_model
from kdhub.registry.catalog import KINDS, Entry, Registry
from kdhub.registry.loading import get_registry

__all__ = [
    "OptionRow",
    "capabilities",
    "config_reference",
    "markdown_options",
    "option_rows",
    "plugin_catalog",
    "show_text",
    "type_text",
    "update_generated_sections",
]

_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "len >="), ("max_length", "len <="))


@dataclass(frozen=True)
class OptionRow:
    """One option of a pydantic model, as text."""

    name: str
    type: str
    default: str
    bounds: str
    description: str


def type_text(annotation: Any) -> str:
    """A readable type: ``float``, ``int | float``, ``sliding | fixed``, ``list[int]``."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in get_args(annotation))
    if origin is Annotated:
        return type_text(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(a) for a in get_args(annotation))
    if annotation is type(None):
        return "None"
    if origin is not None:
        args = ", ".join(type_text(a) for a in get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _bounds(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        for attr, symbol in _BOUNDS:
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(see below)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return repr([getattr(v, "name", v) for v in value])
    return repr(value)


def option_rows(model: type[BaseModel], prefix: str = "") -> list[OptionRow]:
    """The fields of a pydantic model (a plugin's ``Options``, a config section) as rows."""
    return [
        OptionRow(prefix + name, type_text(field.annotation), _default(field), _bounds(field), field.description or "")
        for name, field in model.model_fields.items()
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_options(model: type[BaseModel]) -> list[str]:
    """A Markdown table of a model's options (option, type, default, bounds, description)."""
    rows = option_rows(model)
    if not rows:
        return ["No options."]
    lines = ["| option | type | default | bounds | description |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| `{r.name}` | {_cell(r.type)} | `{r.default}` | {_cell(r.bounds)} | {_cell(r.description)} |")
    return lines


def capabilities(cls: type) -> dict[str, Any]:
    """The capabilities a plugin class declares (``CAPABILITIES`` of its kind), read from an instance with
    default options, so option-dependent ones (properties) show their values."""
    names = getattr(cls, "CAPABILITIES", ())
    try:
        instance = cls()
    except Exception:
        instance = cls
    values = {}
    for name in names:
        value = getattr(instance, name, None)
        values[name] = None if isinstance(value, property) else value
    return values


def show_text(kind: str, entry: Entry) -> str:
    """What ``kdhub show KIND NAME`` prints: the plugin's origin, docstring, capabilities and options."""
    cls = entry.cls
    lines = [f"{kind} {entry.name}  (from {entry.origin}, {cls.__module__}.{cls.__name__})", ""]
    lines.append((cls.__doc__ or "").strip().replace("\n    ", "\n"))
    facts = capabilities(cls)
    if facts:
        lines += ["", "  ".join(f"{k}={v!r}" for k, v in facts.items())]
    rows = [(r.name, r.type, r.default, r.bounds, r.description) for r in option_rows(cls.Options)]
    lines += ["", "options:" if rows else "options: none"]
    widths = [max(len(r[i]) for r in rows) for i in range(4)] if rows else []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        lines.append(f"  {cells[0]}  {cells[1]}  default {cells[2]}  {cells[3]}  {row[4]}")
    return "\n".join(lines) + "\n"


def plugin_catalog(registry: Registry) -> dict[str, Any]:
    """What ``kdhub list`` and ``kdhub show`` print for every plugin of ``registry``, as plain data for the
    catalog cache: ``{"kinds": {kind: {name: {"summary", "show"}}}, "load_errors": [...]}``, each kind's
    names in registration order (close matches are suggested in it)."""
    kinds = {
        kind: {e.name: {"summary": e.cls.summary(), "show": show_text(kind, e)} for e in registry.registered(kind)}
        for kind in KINDS
    }
    return {"kinds": kinds, "load_errors": list(registry.load_errors)}


_SECTION = re.compile(r"<!-- options: (\w+) (\w+) -->\n.*?<!-- /options -->", re.S)


def update_generated_sections(text: str) -> str:
    """Regenerate every ``<!-- options: KIND NAME --> ... <!-- /options -->`` section of a Markdown text."""
    registry = get_registry()

    def render(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2)
        table = markdown_options(registry.get(kind, name).Options)
        return "\n".join([f"<!-- options: {kind} {name} -->", *table, "<!-- /options -->"])

    return _SECTION.sub(render, text)


def config_reference() -> str:
    """Markdown reference of every run-config key, generated from the pydantic models."""
    lines = [
        "# Run config reference",
        "",
        "Generated from `kdhub/contract/config.py` by `make docs` (a test keeps it in sync).",
        "A run is one YAML file with these keys; unknown keys are errors. Plugin options are documented by",
        "`kdhub show KIND NAME`. Override any value from the command line with `--set dotted.path=value`",
        "(`--set methods.0.options.temperature=2`).",
        "",
        "Config files are UTF-8 YAML read by a strict loader: plain values, lists and mappings only (tags such as",
        "`!!binary`, `!!set` or `!!python/...` are refused), no duplicate keys, at most 64 levels of nesting. Anchors",
        "and aliases may share values, within limits that rule out alias bombs: at most 64 aliases, none pointing",
        "at a value that holds aliases itself or at the value it sits in. Floats must be finite (`.nan` and `.inf`",
        "are refused) and a boolean is never taken for a number. Limits of MLflow (run name 250 characters, tag",
        "keys 250 characters of letters, digits and `_-.:/ `, tag values 8,000 characters) are checked before the",
        "run starts.",
        "",
        "| key | type | default | bounds | description |",
        "| --- | --- | --- | --- | --- |",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for row, field in zip(option_rows(model, prefix), model.model_fields.values(), strict=True):
            inner = inner_model(field.annotation)
            kind = "list" if "list[" in str(field.annotation) else ("mapping" if inner else row.type)
            cells = [f"`{row.name}`", kind.replace("|", "\\|"), f"`{row.default}`", row.bounds, row.description]
            lines.append("| " + " | ".join(cells) + " |")
            if inner is not None and inner is not PluginRef:
                walk(inner, f"{row.name}{'[i]' if kind == 'list' else ''}.")

    walk(RunConfig, "")
    return "\n".join(lines) + "\n"


def _main(argv: list[str]) -> int:
    if argv == ["config"]:
        print(config_reference(), end="")
        return 0
    if len(argv) != 2 or argv[0] != "policies":
        print("usage: python -m kdhub.registry.reference policies FILE.md | config", file=sys.stderr)
        return 2
    path = Path(argv[1])
    path.write_text(update_generated_sections(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
