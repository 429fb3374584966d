"""kdhub's built-in policies, one module per policy."""

from __future__ import annotations

import kdhub


@kdhub.hookimpl
def kdhub_register_policies(register):
    for cls in kdhub.plugin_classes(__name__, kdhub.Policy):
        register(cls)
