"""Layer 2, the registry and plugin loading: finds the installed plugins and checks configs against them.

- :mod:`~kdhub.registry.catalog`: the :class:`Registry` of plugin classes by kind and name;
- :mod:`~kdhub.registry.loading`: the pluggy manager that loads the ``kdhub`` entry points into it;
- :mod:`~kdhub.registry.resolve`: a run config against the plugins (names, options, capabilities);
- :mod:`~kdhub.registry.reference`: option tables and capabilities as text (``kdhub show``, docs);
- :mod:`~kdhub.registry.student`: the student checkpoint, rebuilt through its model plugin.

Imports only :mod:`kdhub.contract`.
"""

from __future__ import annotations

# the names of the former module kdhub.registry
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
