"""Reading run configs: a strict YAML loader, ``--set dotted.path=value`` overrides, validation, and the
check that a resumed run keeps its config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdhub.contract.config import RunConfig
from kdhub.contract.errors import ConfigError
from kdhub.contract.validation import format_validation_error

__all__ = [
    "RESUMABLE",
    "ConfigLoader",
    "apply_overrides",
    "check_resume",
    "dump_config",
    "load_config",
    "parse_config",
    "parse_yaml",
    "read_yaml",
]

MAX_YAML_BYTES = 4 * 2**20
MAX_YAML_DEPTH = 64
MAX_YAML_ALIASES = 64
_STR = "tag:yaml.org,2002:str"
_ALLOWED_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float", "str", "seq", "map", "merge")}


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, stricter for configs.

    - Only plain data: null, booleans, numbers, strings, lists and mappings. Explicit tags
      (``!!binary``, ``!!set``, ``!!python/...``, ``!custom``) are refused; unquoted dates stay strings.
    - Duplicate keys in a mapping are refused (PyYAML silently keeps the last one).
    - Nesting deeper than 64 levels is refused (before Python's recursion limit is reached).
    - Anchors and aliases share values, within limits that make alias bombs ("billion laughs")
      impossible: at most 64 aliases per document, an alias may not point at a value that contains
      aliases itself, nor at the value it sits in (no self-reference). So the data after expansion is
      at most 64 times the size of the file.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._open: list[str] = []
        self._with_aliases: set[str] = set()

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            anchor = event.anchor
            problem = None
            if anchor in self._open:
                problem = f"alias *{anchor} refers to the value it is part of"
            elif anchor in self._with_aliases:
                problem = f"alias *{anchor} refers to a value that holds aliases itself (aliases may not nest)"
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                problem = f"more than {MAX_YAML_ALIASES} aliases"
            if problem:
                raise yaml.composer.ComposerError(None, None, problem, event.start_mark)
            self._with_aliases.update(self._open)
            return super().compose_node(parent, index)
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", event.start_mark
            )
        if anchor:
            self._open.append(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor:
                self._open.pop()
        tag = node.tag
        if tag == "tag:yaml.org,2002:timestamp" or (isinstance(node, yaml.ScalarNode) and tag == _STR):
            node.tag = _STR
        elif tag not in _ALLOWED_TAGS:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"the tag {tag.replace('tag:yaml.org,2002:', '!!')} is not allowed in a config "
                "(only plain values, lists and mappings)",
                node.start_mark,
            )
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            "while reading a mapping",
                            node.start_mark,
                            f"found duplicate key {key!r}",
                            key_node.start_mark,
                        )
                    seen[key] = True
                except TypeError:  # an unhashable key: PyYAML reports it itself
                    pass
        return super().construct_mapping(node, deep)


_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def _decode(raw: bytes, source: str) -> str:
    """The text of a YAML file: UTF-8 only (a UTF-8 byte-order mark is tolerated)."""
    for bom, name in _BOMS:
        if raw.startswith(bom):
            raise ConfigError(f"{source}: the file is {name} text; kdhub reads UTF-8, save it as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{source}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "save the file as UTF-8 (is it a binary or Latin-1 file?)"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"{source}: the file holds NUL bytes; it is not a YAML text file")
    return text.removeprefix("\ufeff")


def parse_yaml(text: str, source: str = "config") -> Any:
    """YAML text through kdhub's safe loader (see :class:`ConfigLoader`); errors name ``source``."""
    loader = ConfigLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(p for p in (err.context, err.problem) if p)
        raise ConfigError(f"{source}: invalid YAML: {where}{what}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {err}".replace("\n", " ")) from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike[str], what: str = "config file") -> Any:
    """Read a YAML file safely: one ConfigError line for a missing, unreadable, binary or hostile file."""
    name = str(path)
    shown_name = name if len(name) <= 200 else f"{name[:100]}...{name[-40:]} ({len(name)} characters)"
    try:
        file = Path(path)
        if not file.exists():
            raise ConfigError(f"{shown_name}: no such {what}")
        if not file.is_file():
            raise ConfigError(f"{shown_name}: not a file (give a YAML {what})")
        if file.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{shown_name}: {file.stat().st_size:,} bytes is too large for a YAML {what}")
        raw = file.read_bytes()
    except OSError as err:
        raise ConfigError(f"{shown_name}: cannot read the {what}: {err.strerror or err}") from None
    return parse_yaml(_decode(raw, shown_name), shown_name)


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a config dict; every problem becomes one ``path: message`` line in a ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a run config must be a mapping, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, RunConfig)) from None
    except RecursionError:
        raise ConfigError(f"{source}: the config is nested too deeply") from None


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``--set`` overrides and validate it."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a run config must be a mapping of keys, got {type(data).__name__}")
    return parse_config(apply_overrides(data, overrides or []), str(path))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``a.b.c=value`` sets a nested key (value parsed as YAML); ``methods.0.weight=1`` indexes lists."""
    data = _deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected dotted.path=value")
        try:
            value = parse_yaml(raw, f"--set {key}") if raw else ""
        except ConfigError as err:
            if "invalid YAML" not in str(err):
                raise
            value = raw
        parts = key.split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            nxt = parts[depth + 1]
            node = _child(node, part, key, create=[] if nxt.isdigit() else {})
        _assign(node, parts[-1], value, key)
    return data


def _child(node: Any, part: str, key: str, create: Any) -> Any:
    """The container at ``part`` (created if missing); a plugin shorthand "kd" becomes {name: kd}."""
    if isinstance(node, list):
        index = _index(part, node, key)
        if isinstance(node[index], str):
            node[index] = {"name": node[index]}
        return node[index]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {key}: {part!r} is inside a value that is not a mapping")
    value = node.get(part)
    if isinstance(value, str):
        value = node[part] = {"name": value}
    elif value is None:
        value = node[part] = create
    return value


def _assign(node: Any, part: str, value: Any, key: str) -> None:
    if isinstance(node, list):
        node[_index(part, node, key)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ConfigError(f"--set {key}: cannot set {part!r} inside a {type(node).__name__}")


def _index(part: str, node: list[Any], key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {key}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


RESUMABLE = (
    "epochs",
    "train.progress",
    "train.device",
    "train.eval_every",
    "checkpoint.every",
    "checkpoint.resume_every",
    "train.threads",
    "train.finite_check_steps",
    "tracking.uri",
    "tracking.log_checkpoints",
    "tracking.log_model",
    "tracking.system_metrics",
)
"""Keys a resumed run may change (``epochs`` may only grow); any other change is refused."""


_UNSET = object()


def _differences(old: Any, new: Any, path: str) -> list[tuple[str, Any, Any]]:
    """(dotted path, old, new) of every difference; lists of different lengths differ as a whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in dict.fromkeys([*old, *new]):
            out += _differences(old.get(key, _UNSET), new.get(key, _UNSET), f"{path}.{key}" if path else str(key))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in _differences(a, b, f"{path}.{i}")]
    return [] if old == new else [(path, old, new)]


def _brief(value: Any) -> str:
    if value is _UNSET:
        return "unset"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
    return text if len(text) <= 60 else f"{text[:57]}..."


def check_resume(config: RunConfig, logged: dict[str, Any], run_id: str) -> None:
    """Refuse resuming run ``run_id`` (whose config was ``logged``) with a config that changes it.

    Only the :data:`RESUMABLE` keys may differ: anything else (method, options, lr, data ...) would be
    half-applied, since the checkpoint holds the state built from the logged config.
    """
    try:
        before = parse_config(logged, "the run's logged config").model_dump(mode="json")
    except ConfigError:
        before = logged if isinstance(logged, dict) else {}
    changed = _differences(before, config.model_dump(mode="json"), "")
    refused = [(k, a, b) for k, a, b in changed if not any(k == r or k.startswith(f"{r}.") for r in RESUMABLE)]
    if refused:
        key, old, new = refused[0]
        more = f" and {len(refused) - 1} more key{'s' if len(refused) > 2 else ''}" if len(refused) > 1 else ""
        raise ConfigError(
            f"--resume {run_id}: the config changes {key} ({_brief(old)} -> {_brief(new)}){more}; a resumed run "
            f"keeps its config except {', '.join(RESUMABLE)} (start a new run instead)"
        )
    if config.epochs < int(before.get("epochs", 0) or 0):
        raise ConfigError(
            f"--resume {run_id}: epochs {config.epochs} is fewer than the run's {before['epochs']} (it may only grow)"
        )


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
