"""Logit regression (Ba & Caruana, 2014)."""

from __future__ import annotations

from typing import ClassVar

import torch

import kdhub


class MSELogits(kdhub.Method):
    """Logit regression: mean squared difference between student and teacher logits.

    Paper: J. Ba, R. Caruana, "Do Deep Nets Really Need to be Deep?", NIPS 2014. Annealing KD
    (Jafari et al., EACL 2021) uses it in its first phase against the scaled teacher Phi(e) * z_t;
    the scale is the policy's ``teacher_scale``, applied by the engine before the method sees the
    logits.

    Per sample: ``l_i = mean_k (z_s,k - z_t,k)^2`` (the official annealing code's ``F.mse_loss``,
    averaged over the batch by the engine). Example: z_s = 0, z_t = 0.1 * [2, -1, 0] gives
    ``(0.04 + 0.01 + 0) / 3 = 0.016667``. No options.

    ::

        ce_weight: 0.0
        methods:
          - name: mse_logits
            weight: 1.0
        policy: {name: annealing}
    """

    name = "mse_logits"
    output_based: ClassVar[bool] = True
    default_weight: ClassVar[float] = 1.0
    paper: ClassVar[str] = "Ba & Caruana NIPS 2014"

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        diff = out.student_logits.float() - out.teacher_logits.float()
        return diff.square().mean(1)
