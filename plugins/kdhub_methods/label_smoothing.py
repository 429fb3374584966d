"""Label smoothing as a teacher-free loss term (Szegedy et al., 2016)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

import kdhub


class LabelSmoothing(kdhub.Method):
    """Label-smoothed cross-entropy on the labels: the no-teacher baseline of the TLLM paper.

    Paper: C. Szegedy, V. Vanhoucke, S. Ioffe, J. Shlens, Z. Wojna, "Rethinking the Inception
    Architecture for Computer Vision", CVPR 2016; used as a baseline with alpha = 0.1 by Zhu et al.,
    "Teach Less, Learn More" (NeurIPS 2022, Table 9) and as TLLM's replacement loss.

    Per sample: ``l_i = -sum_k q_k log softmax(z_s)_k`` with ``q = (1 - alpha) onehot(y) + alpha / C``
    (PyTorch's ``F.cross_entropy(label_smoothing=alpha)`` convention: the mass alpha is spread over
    all C classes, the target included), at T = 1. On kdhub's test batch TB with alpha = 0.1:
    ``[0.507606, 1.098612]``, mean 0.803109 (the other convention, alpha spread over the C - 1
    non-target classes, would give 0.557606 for the first sample).

    It needs no teacher. The run's plain CE term is separate, so label-smoothing *training* is
    ``ce_weight: 0`` plus this method with weight 1 (adding it to a CE weight of 1 would mix the
    two)::

        ce_weight: 0.0
        methods:
          - name: label_smoothing
            weight: 1.0
            options: {alpha: 0.1}
    """

    name = "label_smoothing"
    needs_teacher = False
    output_based: ClassVar[bool] = False
    default_weight: ClassVar[float] = 1.0
    paper: ClassVar[str] = "Szegedy et al. CVPR 2016"

    class Options(kdhub.Options):
        alpha: kdhub.FiniteFloat = Field(
            0.1, ge=0, le=1, description="smoothing mass alpha: q = (1 - alpha) onehot + alpha / C"
        )

    options: Options

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        return F.cross_entropy(
            out.student_logits.float(), out.labels, reduction="none", label_smoothing=self.options.alpha
        )
