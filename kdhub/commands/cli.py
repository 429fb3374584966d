"""The ``kdhub`` program: its parser, built from the commands registered through the
``kdhub_register_commands`` hook (kdhub's own, :mod:`kdhub.commands.builtin`, and the plugins'), and how
errors end it (one line; exit code 2 for bad input, 130 on Ctrl-C, 143 on SIGTERM)."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import os
import sys
from typing import TYPE_CHECKING, Any

from kdhub.commands import browse
from kdhub.contract.errors import EXIT_USAGE, KdhubError, Terminated
from kdhub.contract.version import __version__
from kdhub.registry.loading import cached_catalog, get_registry, save_catalog

if TYPE_CHECKING:
    from kdhub.commands.builtin import prepare_run
    from kdhub.registry.catalog import Entry, Registry

__all__ = ["EXIT_USAGE", "build_parser", "main", "prepare_run"]

_FROM_CATALOG = ("-h", "--help", "--version", "list", "show")
"""A first argument that needs only the catalog (no argument at all, too): names, help, version, list and show."""


def __getattr__(name: str) -> Any:
    if name == "prepare_run":  # the built-in commands import the engine's config checks (start-up time)
        from kdhub.commands.builtin import prepare_run

        return prepare_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _top_parser() -> tuple[argparse.ArgumentParser, Any]:
    parser = argparse.ArgumentParser(prog="kdhub", description="knowledge-distillation workbench")
    parser.add_argument("--version", action="version", version=f"kdhub {__version__}")
    return parser, parser.add_subparsers(dest="command", required=True)


def _commands() -> list[Entry]:
    """The registered commands in ``kdhub --help``'s order: kdhub's own first (in their order), then the plugins'."""
    # deferred: the built-in commands import the engine's config checks, which `kdhub list` does not need
    from kdhub.commands.builtin import BUILTIN_COMMANDS

    entries = get_registry().entries("command")  # loads the plugins: they may add commands
    own = {cls: i for i, cls in enumerate(BUILTIN_COMMANDS)}
    if not any(entry.cls in own for entry in entries):
        raise KdhubError(
            "kdhub's own commands are not registered (the entry point `commands = kdhub.commands.builtin` of the "
            "kdhub distribution): reinstall kdhub (pip install -e . in a checkout)"
        )
    return sorted(entries, key=lambda e: own.get(e.cls, len(own)))


def _help(entry: Entry) -> dict[str, Any]:
    return {"name": entry.name, "help": entry.cls.help or entry.cls.summary(), "description": entry.cls.description}


def build_parser() -> argparse.ArgumentParser:
    """The ``kdhub`` parser: a subcommand for every registered command (kdhub's own first, in their order)."""
    parser, sub = _top_parser()
    for entry in _commands():
        command = entry.cls()
        text = _help(entry)
        p = sub.add_parser(entry.name, help=text["help"], description=text["description"] or None)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def _catalog_parser(catalog: dict[str, Any]) -> argparse.ArgumentParser:
    """The parser of :func:`build_parser`, made from the catalog cache: every command's name and help, and
    ``list`` and ``show`` answering from the catalog (the other commands are never run through it)."""
    parser, sub = _top_parser()
    for text in catalog["commands"]:
        p = sub.add_parser(text["name"], help=text["help"], description=text["description"] or None)
        if text["name"] == "list":
            browse.list_arguments(p)
            p.set_defaults(func=lambda args: browse.list_plugins(catalog, args))
        elif text["name"] == "show":
            browse.show_arguments(p)
            p.set_defaults(func=lambda args: browse.show_plugin(catalog, args))
    return parser


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser for ``argv``: from the catalog cache when it is fresh and ``argv`` needs no more (``kdhub``,
    ``kdhub --help``, ``kdhub list ...``, ``kdhub show ...``); otherwise built from the loaded plugins, and
    then, for those, the catalog is saved for the next time."""
    if argv and argv[0] not in _FROM_CATALOG:
        return build_parser()
    catalog = cached_catalog()
    if catalog is not None:
        return _catalog_parser(catalog)
    parser = build_parser()
    save_catalog(lambda registry: {**_plugin_catalog(registry), "commands": [_help(e) for e in _commands()]})
    return parser


def _plugin_catalog(registry: Registry) -> dict[str, Any]:
    # deferred: only a cache miss builds the catalog (it imports pydantic for the option tables)
    from kdhub.registry.reference import plugin_catalog

    return plugin_catalog(registry)


def main(argv: list[str] | None = None) -> int:
    # The program owns its process, so it may skip the full garbage collections of interpreter exit over
    # everything torch and MLflow loaded (about a second of CPU, longer than a short run's training):
    # gc.freeze() as an early-registered, so late-run, exit handler leaves those objects to the OS.
    # kdhub.run() as a library call leaves the caller's process as it is.
    atexit.unregister(gc.freeze)  # once, however often main() is called in one process
    atexit.register(gc.freeze)
    try:
        try:
            args = _parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
            code = args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
            return code
        except KdhubError as err:
            print(f"kdhub: error: {err}", file=sys.stderr)
            return err.exit_code
        except Terminated as stopped:
            from kdhub.tracking.failures import interrupted_line  # deferred: imports mlflow (start-up time)

            print(f"kdhub: {interrupted_line(stopped)}", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print("kdhub: interrupted", file=sys.stderr)
            return 130
    except BrokenPipeError:
        # the reader (``| head``) went away: stop quietly, and keep Python from complaining at exit
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
