"""Layer 2, the registry and plugin loading: finds the installed plugins and checks configs against them.

- :mod:`~kdhub.registry.catalog`: the :class:`Registry` of plugin classes by kind and name;
- :mod:`~kdhub.registry.loading`: the pluggy manager that loads the ``kdhub`` entry points into it;
- :mod:`~kdhub.registry.lookup`: kinds and names checked, with close matches (shared by the registry
  and the catalog cache);
- :mod:`~kdhub.registry.cache`: what ``kdhub list`` / ``show`` / ``--help`` print, cached on disk while the
  installed plugins stay the same;
- :mod:`~kdhub.registry.resolve`: a run config against the plugins (names, options, capabilities);
- :mod:`~kdhub.registry.reference`: option tables and capabilities as text (``kdhub show``, docs);
- :mod:`~kdhub.registry.student`: the student checkpoint, rebuilt through its model plugin.

Imports only :mod:`kdhub.contract`. The names below (those of the former module ``kdhub.registry``) are
imported on first use, so that ``kdhub.registry.cache`` can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdhub.contract.validation import format_validation_error, shown, suggest
    from kdhub.registry.catalog import KINDS, DuplicatePluginError, Entry, Registry, check_options

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

_HOME = {
    **dict.fromkeys(("format_validation_error", "shown", "suggest"), "kdhub.contract.validation"),
    **dict.fromkeys(("KINDS", "DuplicatePluginError", "Entry", "Registry", "check_options"), "kdhub.registry.catalog"),
}


def __getattr__(name: str) -> Any:
    """A name of ``__all__``, imported from its module on first use (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
