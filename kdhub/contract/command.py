"""The command contract: a ``kdhub`` subcommand contributed by a plugin (``kdhub compare`` is one)."""

from __future__ import annotations

import argparse
from abc import abstractmethod
from typing import ClassVar

from kdhub.contract.base import Plugin

__all__ = ["Command"]


class Command(Plugin):
    """Base of every plugin command: ``kdhub <name> ...``.

    Register the class with the ``kdhub_register_commands`` hook; the ``kdhub`` command adds a
    subcommand named ``name`` with ``help`` (default: the docstring's first line) and, above its
    arguments in ``kdhub NAME --help``, ``description``. A :class:`kdhub.KdhubError` raised by
    :meth:`run` is printed as one line with exit code 2. kdhub's own commands (``run``, ``study`` ...)
    are registered the same way (:mod:`kdhub.commands.builtin`).
    """

    kind: ClassVar[str] = "command"
    help: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the subcommand's arguments on its own parser."""

    @abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Carry the command out; return the exit code (0 on success)."""
