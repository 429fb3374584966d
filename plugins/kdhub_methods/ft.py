"""Factor transfer (Kim et al., NeurIPS 2018)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

import kdhub
from kdhub_methods._feature_common import (
    MaskedBatchNorm2d,
    match_spatial,
    require_maps,
    resolve_stages,
    role_shapes,
    taught_weight,
)


def factor_vector(f: Tensor, form: str) -> Tensor:
    """The L2-normalised factor: of ``mean_c f^2`` (RepDistiller) or of the whole factor map (paper): ``[B, D]``."""
    f = f.float()
    flat = f.square().mean(dim=1).flatten(1) if form == "repdistiller" else f.flatten(1)
    return F.normalize(flat, dim=1)


def ft_loss(factor_s: Tensor, factor_t: Tensor, form: str) -> Tensor:
    """Per-sample mean absolute difference of the normalised factors (p = 1): ``[B]``."""
    factor_s, factor_t = match_spatial(factor_s, factor_t)
    return (factor_vector(factor_s, form) - factor_vector(factor_t, form)).abs().mean(dim=1)


def _conv_block(c_in: int, c_out: int, transposed: bool = False) -> nn.Module:
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    return nn.Sequential(conv(c_in, c_out, 3, 1, 1), nn.LeakyReLU(0.1))


class Paraphraser(nn.Module):
    """Autoencoder of the teacher's map: 3 convs to ``rate * C`` channels (the factor), 3 transposed convs back."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        c, k = channels, factor_channels
        self.encoder = nn.Sequential(_conv_block(c, c), _conv_block(c, k), _conv_block(k, k))
        self.decoder = nn.Sequential(_conv_block(k, k, True), _conv_block(k, c, True), _conv_block(c, c, True))


class Translator(nn.Module):
    """Student-side encoder to the factor space: 3 x (3x3 conv, BatchNorm (masked), LeakyReLU 0.1)."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        c, k = channels, factor_channels
        self.convs = nn.ModuleList([nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, k, 3, 1, 1), nn.Conv2d(k, k, 3, 1, 1)])
        self.bns = nn.ModuleList([MaskedBatchNorm2d(c), MaskedBatchNorm2d(k), MaskedBatchNorm2d(k)])

    def forward(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        for conv, bn in zip(self.convs, self.bns, strict=True):
            x = F.leaky_relu(bn(conv(x), weight), 0.1)
        return x


class FT(kdhub.Method):
    """Factor transfer: match the student's translated factors to the factors of a teacher paraphraser.

    Paper: J. Kim, S. Park, N. Kwak, "Paraphrasing Complex Network: Network Compression via
    Factor Transfer", NeurIPS 2018.

    Initialisation stage (``init_epochs``, RepDistiller 30): a paraphraser (autoencoder, no BN,
    LeakyReLU 0.1, factor with ``rate * C_t`` channels, rate 0.5) is trained on the teacher's map
    ``F_t`` of stage ``stage`` with ``init_loss = mean (P(F_t) - F_t)^2`` (reconstruction). Main
    stage: the paraphraser is frozen (no gradient reaches it) and gives the teacher factor
    ``T = enc(F_t)``; a trainable translator (3 x conv-BN-LeakyReLU) gives the student factor
    ``S = tr(F_s)``. Per sample: ``l_i = mean |S/||S|| - T/||T|| |`` (p = 1), where the vector is

    - ``form: repdistiller`` (default, RepDistiller's ``FactorTransfer`` for which its weight 200
      is tuned): ``vec(mean_c S_c^2)`` -- an attention map of the factor;
    - ``form: paper`` (the paper's Eq. 3, as Knowledge-Distillation-Zoo and mmrazor implement it):
      ``vec(S)``, the whole factor.

    kdhub's reading: factors of different spatial size are matched by average-pooling the larger;
    ``stage: -1`` is RepDistiller's ``feat[-2]`` (the last stage). RepDistiller trains the
    paraphraser with lr 0.01 for CIFAR ResNet/WRN students (the run's lr otherwise); kdhub's
    initialisation stage uses the run's optimizer settings.

    Reference recipe (CIFAR-100, RepDistiller): CE weight 1, FT weight 200::

        ce_weight: 1.0
        methods:
          - name: ft
            weight: 200
            options: {init_epochs: 30, rate: 0.5, stage: -1}
    """

    name = "ft"
    feature_roles = ("stages",)
    default_weight: ClassVar[float] = 200.0
    paper: ClassVar[str] = "Kim et al. 2018"

    class Options(kdhub.Options):
        init_epochs: int = Field(
            30, ge=0, le=10_000, description="epochs of paraphraser training (reconstruction) before distilling"
        )
        rate: kdhub.FiniteFloat = Field(0.5, gt=0, le=4, description="factor channels = int(rate * teacher channels)")
        stage: int = Field(-1, ge=-64, le=63, description="index into 'stages' of both models (negative from the end)")
        form: Literal["repdistiller", "paper"] = Field(
            "repdistiller", description="repdistiller = compare attention maps of the factors; paper = whole factors"
        )

    options: Options

    @property
    def init_epochs(self) -> int:  # type: ignore[override]  # a capability an option decides
        return self.options.init_epochs

    def setup(self, ctx: kdhub.SetupContext) -> None:
        s_shapes, t_shapes = role_shapes(ctx, "stages", self.name)
        (index,) = resolve_stages(len(s_shapes), len(t_shapes), [self.options.stage], self.name)
        require_maps(s_shapes[index], self.name, "stages", "student")
        require_maps(t_shapes[index], self.name, "stages", "teacher")
        c_s, c_t = s_shapes[index][0], t_shapes[index][0]
        factor = int(c_t * self.options.rate)
        if factor < 1:
            raise kdhub.IncompatibleError(f"ft: rate {self.options.rate} leaves no factor channel for {c_t} channels")
        self.paraphraser = Paraphraser(c_t, factor).to(ctx.device)
        self.translator = Translator(c_s, factor).to(ctx.device)

    def init_loss(self, out: kdhub.StepOutputs) -> Tensor:
        """Reconstruction error of the paraphraser on the teacher's map (the student takes no part)."""
        f_t = out.teacher_features["stages"][self.options.stage]
        rec = self.paraphraser.decoder(self.paraphraser.encoder(f_t))
        return F.mse_loss(rec.float(), f_t.float())

    def loss(self, out: kdhub.StepOutputs) -> Tensor:
        index = self.options.stage
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(out.teacher_features["stages"][index])
        factor_s = self.translator(out.student_features["stages"][index], taught_weight(out))
        return ft_loss(factor_s, factor_t, self.options.form)
