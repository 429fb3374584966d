"""kdhub-cosine: registers the ``cosine`` distillation method with kdhub."""

import kdhub
from kdhub_cosine.cosine import CosineKD


@kdhub.hookimpl
def kdhub_register_methods(register):
    register(CosineKD)
