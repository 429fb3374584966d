"""kdhub's built-in models (``kdhub_zoo.models``) and datasets (``kdhub_zoo.datasets``)."""

from __future__ import annotations

import kdhub


@kdhub.hookimpl
def kdhub_register_models(register):
    for cls in kdhub.plugin_classes("kdhub_zoo.models", kdhub.Model):
        register(cls)


@kdhub.hookimpl
def kdhub_register_datasets(register):
    for cls in kdhub.plugin_classes("kdhub_zoo.datasets", kdhub.Dataset):
        register(cls)
