"""The ``kdhub`` program (``kdhub ...``, ``python -m kdhub.cli ...``, ``torchrun -m kdhub.cli ...``).

The commands themselves are in :mod:`kdhub.commands`.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from kdhub.commands.cli import EXIT_USAGE, build_parser, main

if TYPE_CHECKING:
    from kdhub.commands.builtin import prepare_run

__all__ = ["EXIT_USAGE", "build_parser", "main", "prepare_run"]


def __getattr__(name: str) -> Any:
    if name == "prepare_run":  # the built-in commands import the engine's config checks (start-up time)
        from kdhub.commands.builtin import prepare_run

        return prepare_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
