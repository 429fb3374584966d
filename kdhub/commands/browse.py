"""``kdhub list`` and ``kdhub show``: their arguments, and their output from the catalog cache.

:class:`~kdhub.commands.builtin.ListCommand` and :class:`~kdhub.commands.builtin.ShowCommand` answer from
the loaded registry; when the catalog cache is fresh (:func:`kdhub.registry.loading.cached_catalog`),
:mod:`kdhub.commands.cli` answers from it with the functions here, which print the same bytes without
importing a plugin, torch or pydantic.
"""

from __future__ import annotations

import argparse
import fnmatch
from typing import Any

from kdhub.registry.lookup import check_kind, find_name

__all__ = ["list_arguments", "list_line", "list_plugins", "show_arguments", "show_plugin"]


def list_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``kdhub list``."""
    p.add_argument("kind", help="method, policy, metric, model or dataset")
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. '*kd*'")


def show_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``kdhub show``."""
    p.add_argument("kind")
    p.add_argument("name")


def list_line(name: str, summary: str) -> str:
    """One line of ``kdhub list``."""
    return f"{name:<22} {summary}"


def _table(catalog: dict[str, Any], kind: str) -> dict[str, Any]:
    kinds = catalog["kinds"]
    table: dict[str, Any] = kinds[check_kind(kind, list(kinds))]
    return table


def list_plugins(catalog: dict[str, Any], args: argparse.Namespace) -> int:
    """``kdhub list KIND [PATTERN]`` from the catalog."""
    table = _table(catalog, args.kind)
    for name in sorted(table):
        if fnmatch.fnmatchcase(name, args.pattern):
            print(list_line(name, table[name]["summary"]))
    return 0


def show_plugin(catalog: dict[str, Any], args: argparse.Namespace) -> int:
    """``kdhub show KIND NAME`` from the catalog."""
    table = _table(catalog, args.kind)
    print(table[find_name(args.kind, args.name, table, catalog["load_errors"])]["show"], end="")
    return 0
