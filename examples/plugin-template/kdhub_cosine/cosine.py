"""Cosine-similarity logit distillation."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

import kdhub


class CosineKD(kdhub.Method):
    """Cosine logit matching: the student's logit vector points where the teacher's does.

    Per sample: ``l_i = 1 - cos(z_s,i - c_s,i, z_t,i - c_t,i)`` where ``c`` is the mean logit when
    ``center`` is true (then the loss is one minus the Pearson correlation of the logits, invariant to
    shifting and positively scaling either side). 0 when the student's logits equal the teacher's::

        methods: [{name: cosine, weight: 1.0, options: {center: true}}]
    """

    name = "cosine"
    output_based: ClassVar[bool] = True
    default_weight: ClassVar[float] = 1.0

    class Options(kdhub.Options):
        center: bool = Field(True, description="subtract each sample's mean logit first (Pearson correlation)")
        eps: float = Field(1e-8, gt=0, le=1e-2, description="guards the norm of an all-equal logit vector")

    options: Options  # what self.options is (for type checkers): this class's options

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        s, t = out.student_logits.float(), out.teacher_logits.float()
        if self.options.center:
            s = s - s.mean(dim=1, keepdim=True)
            t = t - t.mean(dim=1, keepdim=True)
        return 1 - F.cosine_similarity(s, t, dim=1, eps=self.options.eps)
