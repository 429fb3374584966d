"""One generic registry for every plugin kind: list, get and create by name."""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, get_args

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from kdhub.base import Plugin
from kdhub.command import Command
from kdhub.dataset import Dataset
from kdhub.errors import ConfigError, KdhubError, PluginNotFoundError
from kdhub.method import Method
from kdhub.metric import Metric
from kdhub.model import Model
from kdhub.policy import Policy

__all__ = [
    "KINDS",
    "DuplicatePluginError",
    "Entry",
    "Registry",
    "check_options",
    "format_validation_error",
    "shown",
    "suggest",
]

KINDS: dict[str, type[Plugin]] = {base.kind: base for base in (Method, Policy, Metric, Model, Dataset, Command)}
"""Every plugin kind, by the ``kind`` its base class declares."""


class DuplicatePluginError(KdhubError):
    """Two sources registered the same name for the same kind."""


@dataclass(frozen=True)
class Entry:
    """A registered plugin class and the distribution it came from."""

    kind: str
    name: str
    cls: type[Any]
    source: str
    version: str

    @property
    def origin(self) -> str:
        return f"{self.source} {self.version}".strip()


def suggest(name: str, candidates: list[str]) -> str:
    """'; did you mean ...?' with the close matches of ``name`` (empty string if none)."""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    close += [c for c in candidates if name and name in c and c not in close][: 3 - len(close)]
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


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


def check_options(cls: type, who: str) -> None:
    """Refuse an ``Options`` model with an empty range or a default that breaks its own bounds."""
    options = getattr(cls, "Options", None)
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        raise KdhubError(f"{who}: Options must be a subclass of kdhub.Options, got {options!r}")
    for field_name, field in options.model_fields.items():
        lower, lower_incl, upper, upper_incl = _bounds(field)
        if lower is not None and upper is not None:
            empty = lower > upper or (lower == upper and not (lower_incl and upper_incl))
            if empty:
                raise KdhubError(f"{who}: option {field_name!r} has an empty range (bounds {lower} and {upper})")
        if field.is_required() or not field.metadata:  # no bound to break (keeps plugin loading fast)
            continue
        default = field.get_default(call_default_factory=True)
        params = (field.annotation, *field.metadata)
        adapter: TypeAdapter[Any] = TypeAdapter(Annotated[params], config=ConfigDict(allow_inf_nan=False))  # type: ignore[arg-type]
        try:
            adapter.validate_python(default)
        except ValidationError as err:
            raise KdhubError(
                f"{who}: the default {shown(default)} of option {field_name!r} breaks its own bounds: "
                f"{_message(dict(err.errors()[0]))}"
            ) from None


class Registry:
    """Plugin classes by kind and name. Names are unique per kind; re-registering is an error."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.load_errors: list[str] = []  # plugins that failed to load, mentioned with unknown names

    def add(self, kind: str, cls: type[Any], source: str = "", version: str = "") -> Entry:
        base = KINDS[self._check_kind(kind)]
        who = source or "a plugin"
        if not isinstance(cls, type) and isinstance(cls, base):
            raise KdhubError(
                f"{who} registered an instance of {type(cls).__name__} as a {kind}; "
                f"register the class: register({type(cls).__name__})"
            )
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise KdhubError(f"{who} registered {cls!r} as a {kind}, but it is not a kdhub.{base.__name__}")
        name = getattr(cls, "name", "")
        if not name or not isinstance(name, str):
            raise KdhubError(f"{who} registered {cls.__name__} without a name")
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        if missing:
            raise KdhubError(
                f"{who} registered {kind} {name!r} ({cls.__name__}), which does not implement"
                f" {', '.join(m + '()' for m in missing)}"
            )
        check_options(cls, f"{kind} {name!r} of {who}")
        existing = self._entries[kind].get(name)
        if existing is not None:
            if existing.cls is cls:
                return existing
            raise DuplicatePluginError(
                f"{kind} {name!r} is registered twice: by {existing.origin} ({existing.cls.__module__}) "
                f"and by {source} {version} ({cls.__module__})".replace("  ", " ")
            )
        entry = Entry(kind, name, cls, source, version)
        self._entries[kind][name] = entry
        return entry

    def entries(self, kind: str | None = None) -> list[Entry]:
        kinds = [self._check_kind(kind)] if kind else list(KINDS)
        return [e for k in kinds for _, e in sorted(self._entries[k].items())]

    def names(self, kind: str, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries[self._check_kind(kind)] if fnmatch.fnmatchcase(n, pattern))

    def entry(self, kind: str, name: str) -> Entry:
        table = self._entries[self._check_kind(kind)]
        base, _, _ = name.partition(":")
        if name in table:
            return table[name]
        if base in table and ":" in name:
            return table[base]
        note = f" ({'; '.join(self.load_errors)})" if self.load_errors else ""
        raise PluginNotFoundError(f"unknown {kind} {name!r}{suggest(name, list(table))}{note}")

    def get(self, kind: str, name: str) -> type[Any]:
        return self.entry(kind, name).cls

    def options(self, kind: str, name: str, options: dict[str, Any] | None = None, where: str = "") -> Any:
        """Validate ``options`` for plugin ``name``; ``where`` is the config path used in errors."""
        cls = self.get(kind, name)
        values = dict(options or {})
        base, sep, variant = name.partition(":")
        rename = None
        if sep:
            name_path = f"{where.removesuffix('.options')}.name" if where else kind
            if "variant" not in cls.Options.model_fields:
                raise ConfigError(f"{name_path}: {kind} {base!r} takes no ':variant' suffix (got {name!r})")
            if "variant" in values:
                raise ConfigError(f"{name_path}: the variant is given twice, by {name!r} and by options.variant")
            values["variant"] = variant
            rename = {"variant": name_path}
        try:
            return cls.Options(**values)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, cls.Options, where, f"{kind} {name!r}", rename)) from None
        except KdhubError as err:
            raise ConfigError(f"{where or kind}: {err} ({kind} {name!r})") from None
        except RecursionError:
            raise ConfigError(f"{where or kind}: the options are nested too deeply ({kind} {name!r})") from None
        except Exception as err:  # a third-party validator that raised something else than ValueError
            raise ConfigError(
                f"{where or kind}: {kind} {name!r} failed to check its options: {type(err).__name__}: {err}"
            ) from None

    def create(self, kind: str, name: str, **options: Any) -> Plugin:
        cls = self.get(kind, name)
        return cls(self.options(kind, name, options))

    @staticmethod
    def _check_kind(kind: str) -> str:
        if kind not in KINDS:
            raise PluginNotFoundError(
                f"unknown plugin kind {kind!r}{suggest(kind, list(KINDS))} (kinds: {', '.join(KINDS)})"
            )
        return kind
