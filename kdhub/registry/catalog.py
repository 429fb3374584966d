"""One generic registry for every plugin kind: list, get and create by name."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from kdhub.contract.base import Plugin
from kdhub.contract.command import Command
from kdhub.contract.dataset import Dataset
from kdhub.contract.errors import ConfigError, KdhubError
from kdhub.contract.method import Method
from kdhub.contract.metric import Metric
from kdhub.contract.model import Model
from kdhub.contract.policy import Policy
from kdhub.contract.validation import _bounds, _message, format_validation_error, shown, suggest
from kdhub.registry.lookup import check_kind, find_name

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

    def registered(self, kind: str) -> list[Entry]:
        """The plugins of ``kind`` in the order they were registered (close matches are listed in it)."""
        return list(self._entries[self._check_kind(kind)].values())

    def names(self, kind: str, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries[self._check_kind(kind)] if fnmatch.fnmatchcase(n, pattern))

    def entry(self, kind: str, name: str) -> Entry:
        table = self._entries[self._check_kind(kind)]
        return table[find_name(kind, name, table, self.load_errors)]

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
        return check_kind(kind, list(KINDS))
