"""Kinds and plugin names checked against what is registered, with close matches in the error.

Shared by the :class:`~kdhub.registry.catalog.Registry` and by ``kdhub list`` / ``kdhub show`` when they
answer from the catalog cache (:mod:`kdhub.registry.cache`), so both word an unknown name the same way.
Imports no torch and no pydantic.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from kdhub.contract.errors import PluginNotFoundError, suggest

__all__ = ["check_kind", "find_name"]


def check_kind(kind: str, kinds: Sequence[str]) -> str:
    """``kind`` if it is one of ``kinds``; otherwise a :class:`PluginNotFoundError` with close matches."""
    if kind not in kinds:
        raise PluginNotFoundError(
            f"unknown plugin kind {kind!r}{suggest(kind, list(kinds))} (kinds: {', '.join(kinds)})"
        )
    return kind


def find_name(kind: str, name: str, names: Collection[str], load_errors: Sequence[str] = ()) -> str:
    """The registered name ``name`` stands for (``timm:resnet18`` stands for ``timm``); an unknown one is a
    :class:`PluginNotFoundError` with close matches among ``names`` (in registration order) and the plugins
    that failed to load."""
    base, _, _ = name.partition(":")
    if name in names:
        return name
    if base in names and ":" in name:
        return base
    note = f" ({'; '.join(load_errors)})" if load_errors else ""
    raise PluginNotFoundError(f"unknown {kind} {name!r}{suggest(name, list(names))}{note}")
