"""Turning pydantic's validation errors into one ``path: message`` line each, with close-match suggestions.

Used wherever a YAML file or plugin options are validated: run configs, study files, plugin options.
"""

from __future__ import annotations

import math
import re
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from kdhub.contract.errors import suggest

__all__ = ["format_validation_error", "inner_model", "shown", "suggest"]


_UNION_BRANCH = re.compile(
    r"^(int|float|str|bool|bytes|none|decimal|constrained-\w+|function-[\w-]+\[.*\]|[a-z][\w-]*\[.*\])$"
)
_BRANCH_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false", "none": "null"}
_PLUGIN_REFS = {"PluginRef", "ModelRef", "TeacherRef", "MethodRef", "MetricRef", "DataConfig"}


def shown(value: Any) -> str:
    """A short, user-facing rendering of an input value (NaN and infinities by name)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _non_finite(value: Any) -> str | None:
    """'NaN' / 'inf' / '-inf' when ``value`` is (or is a string that reads as) a non-finite number."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, float) and not isinstance(value, bool) and not math.isfinite(value):
        return shown(value)
    return None


def _message(item: dict[str, Any]) -> str:
    kind, message, value = item["type"], item["msg"], item.get("input")
    for noise in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(noise)
    bad = _non_finite(value) if kind not in ("value_error", "assertion_error") else None
    if bad is not None:
        return f"{bad} is not allowed, give a finite number"
    if kind in ("model_type", "model_attributes_type", "dataclass_type"):
        owner = (item.get("ctx") or {}).get("class_name", "")
        if owner in _PLUGIN_REFS:
            return f"expected a plugin name or a mapping with 'name' and 'options', got {shown(value)}"
        return f"expected a mapping, got {shown(value)}"
    if kind == "missing" and item["loc"] and isinstance(item["loc"][-1], int):
        return "too few values"
    if kind == "tuple_type":
        return f"expected a list, got {shown(value)}"
    if kind == "too_long" and isinstance(value, (list, tuple)):
        return message.replace("Tuple", "List")
    if not isinstance(value, (dict, list, tuple)) and (
        kind.endswith(("_type", "_parsing", "_fraction"))
        or kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error", "enum")
    ):
        message += f", got {shown(value)}"
    return message


def format_validation_error(
    error: ValidationError,
    model: type | None = None,
    prefix: str = "",
    plugin: str = "",
    rename: dict[str, str] | None = None,
) -> str:
    """One line per problem: ``path.to.key: message (plugin)``; unknown keys get suggestions.

    Pydantic's one error per union branch (``x.int``, ``x.float``) becomes one line; ``rename`` maps a
    top-level key to the config path to report instead (a ``:variant`` suffix is given at ``.name``).
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in error.errors():
        loc = list(item["loc"])
        real = [p for p in loc if not (isinstance(p, str) and _UNION_BRANCH.match(p))]
        key = ".".join(str(p) for p in real)
        if rename and real and str(real[0]) in rename:
            path = ".".join([rename[str(real[0])], *(str(p) for p in real[1:])])
        else:
            path = ".".join(p for p in (prefix, key) if p) or "(top level)"
        grouped.setdefault(path, []).append({**item, "branches": [p for p in loc if p not in real]})
    lines = []
    for path, items in grouped.items():
        first = items[0]
        if len(items) > 1 and all(i["branches"] for i in items):
            if any(_non_finite(i.get("input")) for i in items):
                message = f"{_non_finite(first.get('input'))} is not allowed, give a finite number"
            else:
                names = [_BRANCH_NAMES.get(str(i["branches"][-1]), "another value") for i in items]
                wanted = " or ".join(dict.fromkeys(names))
                message = f"expected {wanted}, got {shown(first.get('input'))}"
        elif first["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, first["loc"][:-1])
            message = "unknown key"
            if allowed:
                message += suggest(str(first["loc"][-1]), allowed) or f" (allowed: {', '.join(allowed)})"
        elif first["type"] == "missing" and not isinstance(first["loc"][-1], int):
            message = "required key is missing"
        else:
            message = _message(first)
        lines.append(f"{path}: {message}" + (f" ({plugin})" if plugin else ""))
    return "\n".join(lines)


def _allowed_keys(model: Any, parents: tuple[Any, ...]) -> list[str]:
    for part in parents:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = inner_model(field.annotation) if field is not None else None
    return sorted(model.model_fields) if model is not None else []


def inner_model(annotation: Any) -> Any:
    """The pydantic model inside an annotation (``list[X]``, ``X | None`` ...), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = inner_model(arg)
        if found is not None:
            return found
    return None


_BOUND_ATTRS = (("ge", True, True), ("gt", True, False), ("le", False, True), ("lt", False, False))


def _bounds(field: Any) -> tuple[Any, bool, Any, bool]:
    """(lower, inclusive, upper, inclusive) of a pydantic field (None where unbounded)."""
    lower = upper = None
    lower_incl = upper_incl = True
    for meta in field.metadata:
        for attr, is_lower, incl in _BOUND_ATTRS:
            value = getattr(meta, attr, None)
            if value is None:
                continue
            if is_lower:
                lower, lower_incl = value, incl
            else:
                upper, upper_incl = value, incl
    return lower, lower_incl, upper, upper_incl
