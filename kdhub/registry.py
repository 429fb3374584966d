"""One generic registry for every plugin kind: list, get and create by name."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from kdhub.base import Plugin
from kdhub.command import Command
from kdhub.dataset import Dataset
from kdhub.errors import ConfigError, KdhubError, PluginNotFoundError
from kdhub.method import Method
from kdhub.metric import Metric
from kdhub.model import Model
from kdhub.policy import Policy

__all__ = ["KINDS", "DuplicatePluginError", "Entry", "Registry", "format_validation_error", "suggest"]

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


def format_validation_error(
    error: ValidationError, model: type | None = None, prefix: str = "", plugin: str = ""
) -> str:
    """One line per problem: ``path.to.key: message (plugin)``; unknown keys get suggestions."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"])
        path = ".".join(p for p in (prefix, loc) if p) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, item["loc"][:-1])
            message = "unknown key"
            if allowed:
                message += suggest(str(item["loc"][-1]), allowed) or f" (allowed: {', '.join(allowed)})"
        elif item["type"] == "missing":
            message = "required key is missing"
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


class Registry:
    """Plugin classes by kind and name. Names are unique per kind; re-registering is an error."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, kind: str, cls: type[Any], source: str = "", version: str = "") -> Entry:
        base = KINDS[self._check_kind(kind)]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise KdhubError(
                f"{source or 'a plugin'} registered {cls!r} as a {kind}, but it is not a kdhub.{base.__name__}"
            )
        name = getattr(cls, "name", "")
        if not name or not isinstance(name, str):
            raise KdhubError(f"{source or 'a plugin'} registered {cls.__name__} without a name")
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        if missing:
            raise KdhubError(
                f"{source or 'a plugin'} registered {kind} {name!r} ({cls.__name__}), which does not implement"
                f" {', '.join(m + '()' for m in missing)}"
            )
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
        raise PluginNotFoundError(f"unknown {kind} {name!r}{suggest(name, list(table))}")

    def get(self, kind: str, name: str) -> type[Any]:
        return self.entry(kind, name).cls

    def options(self, kind: str, name: str, options: dict[str, Any] | None = None, where: str = "") -> Any:
        """Validate ``options`` for plugin ``name``; ``where`` is the config path used in errors."""
        cls = self.get(kind, name)
        values = dict(options or {})
        base, sep, variant = name.partition(":")
        if sep:
            if "variant" not in cls.Options.model_fields:
                raise ConfigError(f"{where or kind}: {kind} {base!r} takes no ':variant' suffix (got {name!r})")
            values.setdefault("variant", variant)
        try:
            return cls.Options(**values)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, cls.Options, where, f"{kind} {name!r}")) from None

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
