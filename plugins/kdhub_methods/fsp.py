"""Flow of solution procedure (Yim et al., CVPR 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

import kdhub
from kdhub_methods._feature_common import full_precision, match_spatial, require_maps, role_shapes


@full_precision
def fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    """``G[a, b] = mean_{h,w} top_a(h, w) * bottom_b(h, w)`` after pooling the larger map: ``[B, C_top, C_bottom]``."""
    bottom, top = match_spatial(bottom.float(), top.float())
    positions = bottom.shape[2] * bottom.shape[3]
    return torch.bmm(top.flatten(2), bottom.flatten(2).transpose(1, 2)) / positions


def fsp_loss(g_s: Sequence[Tensor], g_t: Sequence[Tensor]) -> Tensor:
    """Per-sample ``sum_pairs mean_{a,b} (G_s - G_t)^2`` over consecutive feature pairs: ``[B]``."""
    losses = []
    for k in range(len(g_s) - 1):
        diff = fsp_matrix(g_s[k], g_s[k + 1]) - fsp_matrix(g_t[k], g_t[k + 1])
        losses.append(diff.square().flatten(1).mean(dim=1))
    return torch.stack(losses).sum(dim=0)


class FSP(kdhub.Method):
    """Flow of solution procedure: match the Gram matrices between consecutive stages (initialisation method).

    Paper: J. Yim, D. Joo, J. Bae, J. Kim, "A Gift from Knowledge Distillation: Fast Optimization,
    Network Minimization and Transfer Learning", CVPR 2017.

    For consecutive features ``F_1`` (``C_1 x H x W``) and ``F_2`` (``C_2 x H x W``) of one
    sample, the FSP matrix is ``G[a, b] = mean_{h,w} F_2,a(h, w) F_1,b(h, w)``. Per sample:
    ``l_i = sum_pairs mean_{a,b} (G_s[a, b] - G_t[a, b])^2`` over the chain stem, stage 1, ...,
    last stage (RepDistiller's ``feat[:-1]``). Student and teacher must have the same number of
    features and the same channel count at each (else IncompatibleError).

    Two stages, as in the paper and RepDistiller: for ``init_epochs`` epochs the engine trains
    :meth:`init_loss` alone (the student; RepDistiller: 30 epochs, unweighted), then the main
    stage trains with the task loss only -- ``loss`` is 0 unless ``main_loss: true``, which adds
    the FSP loss (times the method weight) to the main stage too. So with the defaults the method
    weight (RepDistiller's ``-b 50``) has no effect.

    kdhub's reading: the paper pairs the first and last layer of each residual group (equal
    sizes); RepDistiller, followed here, pairs consecutive stage outputs and average-pools the
    larger map of a pair to the smaller. ``include_stem: false`` starts the chain at stage 1 (for
    models that name no ``stem``).

    Reference recipe (CIFAR-100, RepDistiller): CE weight 1, FSP weight 50, 30 init epochs::

        ce_weight: 1.0
        methods:
          - name: fsp
            weight: 50
            options: {init_epochs: 30}
    """

    name = "fsp"
    default_weight: ClassVar[float] = 50.0
    paper: ClassVar[str] = "Yim et al. 2017"

    class Options(kdhub.Options):
        init_epochs: int = Field(
            30, ge=0, le=10_000, description="epochs of the initialisation stage trained with the FSP loss"
        )
        include_stem: bool = Field(True, description="start the chain of features at the stem (RepDistiller)")
        main_loss: bool = Field(
            False, description="also add the FSP loss in the main stage (the paper and RepDistiller do not)"
        )

    options: Options

    @property
    def feature_roles(self) -> tuple[str, ...]:  # type: ignore[override]  # a capability an option decides
        return ("stem", "stages") if self.options.include_stem else ("stages",)

    @property
    def init_epochs(self) -> int:  # type: ignore[override]  # a capability an option decides
        return self.options.init_epochs

    def setup(self, ctx: kdhub.SetupContext) -> None:
        shapes = {}
        for role in self.feature_roles:
            shapes[role] = role_shapes(ctx, role, self.name)
        s_chain = [s for role in self.feature_roles for s in shapes[role][0]]
        t_chain = [t for role in self.feature_roles for t in shapes[role][1]]
        if len(s_chain) != len(t_chain) or len(s_chain) < 2:
            raise kdhub.IncompatibleError(
                f"fsp needs the same number (>= 2) of features on both sides; student {len(s_chain)}, "
                f"teacher {len(t_chain)}"
            )
        for k, (s, t) in enumerate(zip(s_chain, t_chain, strict=True)):
            require_maps(s, self.name, "stages", "student")
            require_maps(t, self.name, "stages", "teacher")
            if s[0] != t[0]:
                raise kdhub.IncompatibleError(
                    f"fsp needs equal channel counts in student and teacher; feature {k} of the chain "
                    f"{' + '.join(self.feature_roles)} has {s[0]} (student) vs {t[0]} (teacher) channels"
                )

    def _chains(self, out: kdhub.StepOutputs) -> tuple[list[Tensor], list[Tensor]]:
        g_s = [f for role in self.feature_roles for f in out.student_features[role]]
        g_t = [f for role in self.feature_roles for f in out.teacher_features[role]]
        return g_s, g_t

    def loss(self, out: kdhub.StepOutputs) -> Tensor:
        if not self.options.main_loss:
            return out.student_logits.new_zeros(out.batch_size)
        return fsp_loss(*self._chains(out))

    def init_loss(self, out: kdhub.StepOutputs) -> Tensor:
        """The FSP loss averaged over the batch."""
        return fsp_loss(*self._chains(out)).mean()
