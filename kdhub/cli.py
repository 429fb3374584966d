"""The ``kdhub`` program (``kdhub ...``, ``python -m kdhub.cli ...``, ``torchrun -m kdhub.cli ...``).

The commands themselves are in :mod:`kdhub.commands`.
"""

from __future__ import annotations

import os
import sys

from kdhub.commands.cli import EXIT_USAGE, build_parser, main, prepare_run

__all__ = ["EXIT_USAGE", "build_parser", "main", "prepare_run"]

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
