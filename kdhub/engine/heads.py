"""Models with more than one output head (DeiT's class and distillation tokens, GoogLeNet's auxiliary heads).

A model may return a tuple of logits. In training the first is the class head, the one the task
(cross-entropy) loss and accuracy use; the others reach methods as the ``heads`` feature role
(``out.student_features["heads"]``), so a method can teach them (DeiT's distillation head). In
evaluation the prediction is the mean of the heads, DeiT's inference rule; every metric and the
per-class analysis see that output (timm's distilled DeiTs already return it in eval mode).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["HEADS_ROLE", "eval_logits", "split_heads"]

HEADS_ROLE = "heads"


def split_heads(output: Any) -> tuple[Tensor, list[Tensor]]:
    """(class logits, extra heads) of a model's training output; a plain tensor has no extra heads."""
    if isinstance(output, Tensor):
        return output, []
    if isinstance(output, (tuple, list)) and output and all(isinstance(t, Tensor) for t in output):
        return output[0], list(output[1:])
    raise TypeError(f"a model returned {type(output).__name__}; expected logits or a tuple of logits")


def eval_logits(output: Any) -> Tensor:
    """The prediction of a model's evaluation output: the logits, or the mean of several heads."""
    logits, heads = split_heads(output)
    return torch.stack([logits, *heads]).mean(0) if heads else logits
