"""What the engine hands to plugins for a batch: :class:`StepOutputs` in training, :class:`EvalBatch` in evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import cast

from torch import Tensor

__all__ = ["EvalBatch", "Outputs", "StepOutputs"]


@dataclass(kw_only=True)
class Outputs:
    """Both models' outputs on one batch.

    Features are keyed by *role* (``"stages"``, ``"preact_stages"``, ``"pooled"`` ...), each a list of
    tensors in network order, taken by forward hooks on the modules the model plugin names; only the
    roles some plugin asked for are present. ``indices`` are the samples' positions in their split.
    ``teacher_logits`` is None only in a run without a teacher, where no plugin that ``needs_teacher``
    runs (it is typed as a tensor for those that do; a teacher-free metric checks for None).
    """

    student_logits: Tensor
    teacher_logits: Tensor = field(default=cast(Tensor, None))
    labels: Tensor
    indices: Tensor
    student_features: dict[str, list[Tensor]] = field(default_factory=dict)
    teacher_features: dict[str, list[Tensor]] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]


@dataclass(kw_only=True)
class StepOutputs(Outputs):
    """One training step: the outputs, the epoch (from 1), the global step (from 0) and the policy's class mask.

    ``class_mask`` is a bool ``[C]`` tensor on the training device (None = every class is taught).
    """

    epoch: int = 1
    step: int = 0
    class_mask: Tensor | None = None

    def taught(self) -> Tensor | None:
        """Per-sample bool mask: sample i is taught iff ``class_mask[labels[i]]`` (None = all)."""
        if self.class_mask is None:
            return None
        return self.class_mask[self.labels]

    def select(self, keep: Tensor) -> StepOutputs:
        """The same outputs restricted to the samples in ``keep`` (bool mask or index tensor)."""
        return replace(
            self,
            student_logits=self.student_logits[keep],
            teacher_logits=None if self.teacher_logits is None else self.teacher_logits[keep],
            labels=self.labels[keep],
            indices=self.indices[keep],
            student_features={k: [t[keep] for t in v] for k, v in self.student_features.items()},
            teacher_features={k: [t[keep] for t in v] for k, v in self.teacher_features.items()},
        )


@dataclass(kw_only=True)
class EvalBatch(Outputs):
    """One evaluation batch: both models in eval mode, no augmentation, no gradients."""
