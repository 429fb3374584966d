"""kdhub's built-in analysis commands (``kdhub compare``)."""

from __future__ import annotations

import kdhub


@kdhub.hookimpl
def kdhub_register_commands(register):
    for cls in kdhub.plugin_classes(__name__, kdhub.Command):
        register(cls)
