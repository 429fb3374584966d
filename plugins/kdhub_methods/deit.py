"""DeiT's hard-label distillation (Touvron et al., ICML 2021)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

import kdhub


class DeiT(kdhub.Method):
    """Hard-label distillation: cross-entropy of the student against the teacher's top-1 class.

    Paper: H. Touvron, M. Cord, M. Douze, F. Massa, A. Sablayrolles, H. Jégou, "Training
    data-efficient image transformers & distillation through attention", ICML 2021 (official code:
    facebookresearch/deit, ``DistillationLoss`` with ``distillation_type='hard'``).

    Per sample: ``l_i = CE(z_s, argmax_k z_t)``; with ``label_smoothing: a`` the hard teacher target
    becomes ``(1 - a) onehot + a / C`` (PyTorch's convention, mass spread over all C classes).
    The paper's total is ``1/2 CE(z_s, y) + 1/2 CE(z_s, y_t)``: CE weight 0.5, method weight 0.5.

    kdhub's reading: the student has one output, so the loss is applied to its logits; DeiT's
    separate distillation token (a second head trained on the teacher's label, averaged with the
    class head at test time) needs a model that exposes both heads and is not part of this method.
    The official code applies no label smoothing to the teacher's hard label (default 0).

    ::

        ce_weight: 0.5
        methods:
          - name: deit
            weight: 0.5
            options: {label_smoothing: 0.0}
    """

    name = "deit"
    output_based: ClassVar[bool] = True
    default_weight: ClassVar[float] = 0.5
    paper: ClassVar[str] = "Touvron et al. ICML 2021"

    class Options(kdhub.Options):
        label_smoothing: kdhub.FiniteFloat = Field(
            0.0, ge=0, le=1, description="smoothing of the teacher's hard label, (1 - a) onehot + a / C"
        )

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        hard = out.teacher_logits.argmax(1)
        return F.cross_entropy(
            out.student_logits.float(), hard, reduction="none", label_smoothing=self.options.label_smoothing
        )
