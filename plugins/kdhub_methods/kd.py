"""Knowledge distillation (Hinton et al., 2015)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

import kdhub
from kdhub.contract.functional import kl_per_sample


class KD(kdhub.Method):
    """Knowledge distillation: match the teacher's softened class probabilities (Hinton et al., 2015).

    Paper: G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network", NIPS DL
    workshop 2015.

    Per sample: ``l_i = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``; the run's loss is
    ``w_ce * CE + w_kd * sum_i l_i / B`` (the true KL, "batchmean"). ``reduction: per_class_mean``
    divides by the number of classes as DeiT's and TAKD's code do (only to reproduce them).

    Reference recipe (CIFAR-100): T = 4, CE weight 0.1, KD weight 0.9::

        ce_weight: 0.1
        methods:
          - name: kd
            weight: 0.9
            options: {temperature: 4}
    """

    name = "kd"
    output_based: ClassVar[bool] = True
    default_weight: ClassVar[float] = 0.9
    paper: ClassVar[str] = "Hinton et al. 2015"

    class Options(kdhub.Options):
        temperature: kdhub.FiniteFloat = Field(4.0, ge=0.01, le=100, description="softmax temperature T")
        reduction: Literal["batchmean", "per_class_mean"] = Field(
            "batchmean", description="batchmean = true KL; per_class_mean also divides by C (DeiT/TAKD)"
        )

    options: Options

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        t = self.options.temperature
        loss = kl_per_sample(out.student_logits, out.teacher_logits, t) * (t * t)
        if self.options.reduction == "per_class_mean":
            loss = loss / out.student_logits.shape[1]
        return loss
