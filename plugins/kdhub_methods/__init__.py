"""kdhub's built-in distillation methods, one module per method."""

from __future__ import annotations

import kdhub


@kdhub.hookimpl
def kdhub_register_methods(register):
    for cls in kdhub.plugin_classes(__name__, kdhub.Method):
        register(cls)
