"""DeiT's hard-label distillation (Touvron et al., ICML 2021)."""

from __future__ import annotations

from typing import ClassVar, Literal

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

    The distillation token: a student that returns ``(class logits, distillation logits)`` in training
    (timm's distilled DeiTs with ``options: {distilled_training: true}``) hands its second head to
    methods as the ``heads`` feature role. ``head: auto`` (the default) teaches that distillation head
    when the student has one and the class head otherwise; the run's cross-entropy always trains the
    class head, and evaluation (accuracy, every metric, the per-class analysis) uses the mean of the
    two heads, as DeiT does at inference. ``head: distillation`` insists on a distillation head. The
    official code applies no label smoothing to the teacher's hard label (default 0); DeiT smooths
    the *true* labels by 0.1, which is the ``label_smoothing`` method in place of plain CE::

        student: {name: "timm:deit_tiny_distilled_patch16_224", options: {distilled_training: true}}
        ce_weight: 0.0
        methods:
          - {name: label_smoothing, weight: 0.5, options: {alpha: 0.1}}
          - {name: deit, weight: 0.5, options: {head: auto}}

    With a single-head student the paper's total ``1/2 CE(z_s, y) + 1/2 CE(z_s, y_t)`` is CE weight
    0.5 and method weight 0.5 (``options: {label_smoothing: 0.0}``).
    """

    name = "deit"
    output_based: ClassVar[bool] = True
    default_weight: ClassVar[float] = 0.5
    paper: ClassVar[str] = "Touvron et al. ICML 2021"

    class Options(kdhub.Options):
        label_smoothing: kdhub.FiniteFloat = Field(
            0.0, ge=0, le=1, description="smoothing of the teacher's hard label, (1 - a) onehot + a / C"
        )
        head: Literal["auto", "class", "distillation"] = Field(
            "auto",
            description="student head taught: the distillation head when the student has one (auto), the "
            "class head, or the distillation head (an error without one)",
        )

    options: Options

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        hard = out.teacher_logits.argmax(1)
        return F.cross_entropy(
            self.student_head(out).float(), hard, reduction="none", label_smoothing=self.options.label_smoothing
        )

    def student_head(self, out: kdhub.StepOutputs) -> torch.Tensor:
        """The logits taught: the distillation head (the first extra head) or the class head."""
        heads = out.student_features.get("heads") or []
        if self.options.head == "class" or (self.options.head == "auto" and not heads):
            return out.student_logits
        if not heads:
            raise kdhub.IncompatibleError(
                "deit: head 'distillation' needs a student that returns (class logits, distillation logits) in "
                "training, e.g. timm:deit_tiny_distilled_patch16_224 with options.distilled_training: true"
            )
        return heads[0]
