"""kdhub's built-in metrics, one module per metric."""

from __future__ import annotations

import kdhub


@kdhub.hookimpl
def kdhub_register_metrics(register):
    for cls in kdhub.plugin_classes(__name__, kdhub.Metric):
        register(cls)
