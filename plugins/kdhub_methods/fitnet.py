"""FitNets: hints from an intermediate teacher stage (Romero et al., ICLR 2015)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

import kdhub
from kdhub_methods._feature_common import ConvReg, require_maps, resolve_stages, role_shapes, taught_weight


def hint_loss(regressed: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean squared error over ``(C, H, W)``: ``[B]``."""
    return (regressed.float() - target.float()).square().flatten(1).mean(dim=1)


class FitNet(kdhub.Method):
    """FitNets: regress an intermediate student stage onto the teacher's ("hint") with an L2 loss.

    Paper: A. Romero, N. Ballas, S. E. Kahou, A. Chassang, C. Gatta, Y. Bengio, "FitNets: Hints for
    Thin Deep Nets", ICLR 2015.

    Per sample: ``l_i = mean_{c,h,w} (r(F_s,i) - F_t,i)^2`` where ``F`` is the output of stage
    ``stage`` and ``r`` is RepDistiller's ``ConvReg`` (conv sized from the dry-run shapes: stride-2
    3x3 conv when the student map is twice as large, 4x4 transposed conv when half as large, a
    ``(1 + H_s - H_t)``-kernel conv otherwise, then BatchNorm and ReLU). The mean over the batch is
    RepDistiller's ``HintLoss`` (``nn.MSELoss``).

    kdhub's reading: like RepDistiller, the hint is trained jointly with the task loss (the paper's
    separate hint-pretraining stage is not used). ``stage: 1`` is the second stage, RepDistiller's
    ``hint_layer: 2`` (its feature list starts with the stem), the middle of a 3-stage CIFAR ResNet.
    The regressor's BatchNorm takes its batch statistics from the taught samples only.

    Reference recipe (CIFAR-100, RepDistiller): CE weight 1, FitNet weight 100, no KD term::

        ce_weight: 1.0
        methods:
          - name: fitnet
            weight: 100
            options: {stage: 1}
    """

    name = "fitnet"
    feature_roles = ("stages",)
    default_weight: ClassVar[float] = 100.0
    paper: ClassVar[str] = "Romero et al. 2015"

    class Options(kdhub.Options):
        stage: int = Field(
            1,
            ge=-64,
            le=63,
            description="index into the 'stages' features of both models (negative counts from the end)",
        )

    options: Options

    def setup(self, ctx: kdhub.SetupContext) -> None:
        s_shapes, t_shapes = role_shapes(ctx, "stages", self.name)
        (index,) = resolve_stages(len(s_shapes), len(t_shapes), [self.options.stage], self.name)
        require_maps(s_shapes[index], self.name, "stages", "student")
        require_maps(t_shapes[index], self.name, "stages", "teacher")
        self.regressor = ConvReg(s_shapes[index], t_shapes[index], relu=True, who=self.name).to(ctx.device)

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        index = self.options.stage
        f_s = out.student_features["stages"][index]
        f_t = out.teacher_features["stages"][index]
        return hint_loss(self.regressor(f_s, taught_weight(out)), f_t)
