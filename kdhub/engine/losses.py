"""How a method's loss is reduced under the policy's class mask (one place, used everywhere)."""

from __future__ import annotations

from torch import Tensor

from kdhub.method import Method, StepOutputs

__all__ = ["method_loss", "split_terms", "total"]


def split_terms(value: Tensor | dict[str, Tensor]) -> dict[str, Tensor]:
    return value if isinstance(value, dict) else {"": value}


def method_loss(method: Method, out: StepOutputs, replacement: Tensor | None = None) -> dict[str, Tensor]:
    """The method's loss terms as scalars, honouring ``out.class_mask``.

    Per-sample losses ``l_i`` reduce to ``sum_i taught_i * l_i / B`` (divided by the batch size,
    so stopping classes does not up-weight the others); for an output-based method,
    ``replacement`` (per sample) stands in for the untaught samples. Batch-relational losses are
    computed on the taught samples only and are 0 when fewer than 2 remain; selecting them waits
    for the device once per step (their count decides the shapes): the one host sync a training
    step makes, and only for a batch-relational method under a policy's class mask.
    """
    taught = out.taught()
    if method.per_sample:
        terms = split_terms(method.loss(out))
        batch = out.batch_size
        if taught is None:
            reduced = {k: v.sum() / batch for k, v in terms.items()}
        else:
            weight = taught.to(next(iter(terms.values())).dtype)
            reduced = {k: (v * weight).sum() / batch for k, v in terms.items()}
            if replacement is not None and method.output_based:
                reduced["replaced"] = (replacement * (1 - weight)).sum() / batch
        return reduced
    if taught is None:
        return {k: v.reshape(()) for k, v in split_terms(method.loss(out)).items()}
    kept = taught.nonzero().squeeze(1)
    if kept.numel() < 2:
        zero = out.student_logits.sum() * 0.0
        return {"": zero}
    return {k: v.reshape(()) for k, v in split_terms(method.loss(out.select(kept))).items()}


def total(terms: dict[str, Tensor]) -> Tensor:
    """The element-wise sum of loss terms (per-sample terms stay per sample)."""
    values = list(terms.values())
    return sum(values[1:], values[0])
