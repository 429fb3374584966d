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

from kdhub.commands.builtin import BUILTIN_COMMANDS, EXIT_USAGE, prepare_run
from kdhub.contract.errors import KdhubError, Terminated
from kdhub.registry.loading import get_registry
from kdhub.tracking.failures import interrupted_line

__all__ = ["EXIT_USAGE", "build_parser", "main", "prepare_run"]


def build_parser() -> argparse.ArgumentParser:
    """The ``kdhub`` parser: a subcommand for every registered command (kdhub's own first, in their order)."""
    parser = argparse.ArgumentParser(prog="kdhub", description="knowledge-distillation workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    entries = get_registry().entries("command")  # loads the plugins: they may add commands
    own = {cls: i for i, cls in enumerate(BUILTIN_COMMANDS)}
    if not any(entry.cls in own for entry in entries):
        raise KdhubError(
            "kdhub's own commands are not registered (the entry point `commands = kdhub.commands.builtin` of the "
            "kdhub distribution): reinstall kdhub (pip install -e . in a checkout)"
        )
    for entry in sorted(entries, key=lambda e: own.get(e.cls, len(own))):
        command = entry.cls()
        p = sub.add_parser(
            entry.name, help=entry.cls.help or entry.cls.summary(), description=entry.cls.description or None
        )
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The program owns its process, so it may skip the full garbage collections of interpreter exit over
    # everything torch and MLflow loaded (about a second of CPU, longer than a short run's training):
    # gc.freeze() as an early-registered, so late-run, exit handler leaves those objects to the OS.
    # kdhub.run() as a library call leaves the caller's process as it is.
    atexit.unregister(gc.freeze)  # once, however often main() is called in one process
    atexit.register(gc.freeze)
    try:
        try:
            args = build_parser().parse_args(argv)
            code = args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
            return code
        except KdhubError as err:
            print(f"kdhub: error: {err}", file=sys.stderr)
            return err.exit_code
        except Terminated as stopped:
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
