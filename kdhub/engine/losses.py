"""How methods' losses are checked, weighted and reduced under the policy's class mask (one place, used everywhere)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdhub.contract.errors import KdhubError
from kdhub.contract.method import LossValue, Method
from kdhub.contract.outputs import StepOutputs

__all__ = ["Teaching", "method_loss", "sample_distillation_loss", "split_terms", "terms_of", "total"]


@dataclass(frozen=True)
class Teaching:
    """A method of the run with its weight and its key in logs (``loss/<key>.<term>``)."""

    method: Method
    weight: float
    key: str


def split_terms(value: LossValue) -> dict[str, Tensor]:
    """A method's return value as named terms (one unnamed term ``""`` for a bare tensor)."""
    return value if isinstance(value, dict) else {"": value}


def terms_of(method: Method, out: StepOutputs) -> dict[str, Tensor]:
    """``method.loss(out)`` as named terms, checked: ``[B]`` per sample when ``per_sample``, else a scalar."""
    terms = split_terms(method.loss(out))
    if not terms:
        raise KdhubError(f"method {method.name!r} returned no loss term")
    expected = (out.batch_size,) if method.per_sample else ()
    for key, value in terms.items():
        if not isinstance(value, Tensor):
            raise KdhubError(f"method {method.name!r}: loss term {key!r} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != expected and not (not method.per_sample and value.numel() == 1):
            what = f"a per-sample loss of shape [{out.batch_size}]" if method.per_sample else "a scalar loss"
            hint = " (or set per_sample = False for a batch-relational loss)" if method.per_sample else ""
            raise KdhubError(
                f"method {method.name!r}: loss term {key or 'loss'!r} has shape {list(value.shape)}; "
                f"expected {what}{hint}"
            )
    return terms


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
        terms = terms_of(method, out)
        batch = out.batch_size
        if taught is None:
            return {k: v.sum() / batch for k, v in terms.items()}
        weight = taught.to(next(iter(terms.values())).dtype)
        reduced = {k: (v * weight).sum() / batch for k, v in terms.items()}
        if replacement is not None and method.output_based:
            reduced["replaced"] = (replacement * (1 - weight)).sum() / batch
        return reduced
    if taught is None:
        return {k: v.reshape(()) for k, v in terms_of(method, out).items()}
    kept = taught.nonzero().squeeze(1)
    if kept.numel() < 2:
        return {"": out.student_logits.sum() * 0.0}
    return {k: v.reshape(()) for k, v in terms_of(method, out.select(kept)).items()}


def sample_distillation_loss(teaching: list[Teaching], out: StepOutputs) -> Tensor | None:
    """Per-sample distillation loss ``sum_t w_t * sum_terms l_i`` of the per-sample methods (None if there are none).

    What a policy's per-class teaching curves are made of (batch-relational methods have no
    per-sample value and are left out).
    """
    per_sample = [t.weight * total(terms_of(t.method, out)) for t in teaching if t.method.per_sample]
    return total(dict(enumerate(per_sample))) if per_sample else None


def total(terms: dict) -> Tensor:
    """The element-wise sum of loss terms (per-sample terms stay per sample)."""
    values = list(terms.values())
    return sum(values[1:], values[0])
