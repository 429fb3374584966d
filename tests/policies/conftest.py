"""Shared helpers for the policy tests: a PolicyContext and an EpochReport without the engine."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import kdhub


@pytest.fixture
def make_ctx() -> Callable[..., kdhub.PolicyContext]:
    def make(
        epochs: int = 10,
        num_classes: int = 5,
        steps_per_epoch: int = 4,
        ce_weight: float = 0.1,
        counts: list[int] | None = None,
    ) -> kdhub.PolicyContext:
        return kdhub.PolicyContext(
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            num_classes=num_classes,
            ce_weight=ce_weight,
            device=torch.device("cpu"),
            has_validation=True,
            class_names=[f"c{m}" for m in range(num_classes)],
            validation_class_counts=None if counts is None else torch.tensor(counts),
            method_names=["kd"],
        )

    return make
