"""Knowledge distillation via softmax regression representation learning (Yang et al., ICLR 2021)."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

import kdhub
from kdhub.contract.functional import kl_per_sample
from kdhub_methods._feature_common import MaskedBatchNorm2d, require_vectors, role_shapes, taught_weight


class SRRL(kdhub.Method):
    """Softmax regression representation learning: the teacher's classifier must read the student's feature.

    Paper: J. Yang, B. Martinez, A. Bulat, G. Tzimiropoulos, "Knowledge Distillation via Softmax
    Regression Representation Learning", ICLR 2021; reference code jingyang2017/KD_SRRL (ImageNet)
    and the CIFAR-100 re-implementation in SimKD (Chen et al., CVPR 2022).

    A connector ``r`` (1x1 conv without bias + BN + ReLU, on the ``pooled`` vector as a 1x1 map) maps
    the student's pooled feature ``h_s`` to the teacher's pooled dimension; ``W_t`` is the teacher's
    frozen classifier (role ``classifier``). Per sample:

        l_i = fm_weight * mean_d (r(h_s,i) - h_t,i)^2  +  sr_weight * mean_c (W_t(r(h_s,i)) - z_t,i)^2

    (terms ``fm`` and ``sr``; their batch means are the reference's two ``F.mse_loss``).
    ``sr_loss: kl`` replaces the second term by ``T^2 KL(softmax(z_t/T) || softmax(W_t(r(h_s))/T))``.

    kdhub's reading: the connector works on the pooled vector, as SimKD's CIFAR code (and the
    brief's CIFAR benchmarks) do; the official ImageNet code applies the same connector to the last
    feature map and pools afterwards. The official code uses MSE for both terms with weight 1 each
    (``loss_kd = statm_loss + mse_loss(pred_sc, pred_t)``, ``--weight 1``). The teacher's classifier
    is used with detached parameters (gradients reach the connector and the student only) and is
    never a submodule of the method. The connector's BatchNorm takes its batch statistics from the
    taught samples only.

    Reference recipe (CIFAR-100, SimKD's ``scripts/run_distill.sh``: ``--distill srrl -c 1 -d 1 -b 1``
    with ``--kd_T 4``, and ``helper/loops.py``'s ``cls * CE + div * KD + beta * SRRL``): CE weight 1,
    SRRL weight 1, plus a KD term at T = 4 with weight 1::

        ce_weight: 1.0
        methods:
          - name: srrl
            weight: 1.0
            options: {fm_weight: 1.0, sr_weight: 1.0, sr_loss: mse}
          - {name: kd, weight: 1.0, options: {temperature: 4.0}}
    """

    name = "srrl"
    feature_roles = ("pooled",)
    default_weight: ClassVar[float] = 1.0
    paper: ClassVar[str] = "Yang et al. 2021"

    class Options(kdhub.Options):
        fm_weight: kdhub.FiniteFloat = Field(1.0, ge=0, le=1e6, description="weight of the feature-matching term L_FM")
        sr_weight: kdhub.FiniteFloat = Field(
            1.0, ge=0, le=1e6, description="weight of the softmax-regression term L_SR"
        )
        sr_loss: Literal["mse", "kl"] = Field(
            "mse", description="mse: squared error of the logits (the paper's L2); kl: KD's softened KL"
        )
        temperature: kdhub.FiniteFloat | None = Field(
            None, ge=0.01, le=100, description="softmax temperature of sr_loss=kl (default 1; not allowed with mse)"
        )

        @model_validator(mode="after")
        def _temperature_only_with_kl(self) -> Any:
            if self.temperature is not None and self.sr_loss != "kl":
                raise ValueError("temperature is used only with sr_loss: kl")
            return self

    options: Options

    def setup(self, ctx: kdhub.SetupContext) -> None:
        s_shapes, t_shapes = role_shapes(ctx, "pooled", self.name)
        require_vectors(s_shapes[-1], self.name, "pooled", "student")
        require_vectors(t_shapes[-1], self.name, "pooled", "teacher")
        s_dim, t_dim = s_shapes[-1][0], t_shapes[-1][0]
        head = _teacher_classifier(ctx, t_dim)
        self._teacher_head = (head,)  # a tuple: not registered, so never trained nor saved with the method
        self.conv = nn.Conv2d(s_dim, t_dim, 1, bias=False)
        self.bn = MaskedBatchNorm2d(t_dim)
        nn.init.normal_(self.conv.weight, 0.0, math.sqrt(2.0 / t_dim))
        self.to(ctx.device)

    def connect(self, h_s: Tensor, weight: Tensor | None = None) -> Tensor:
        """The connector ``r``: ``[B, D_s] -> [B, D_t]``."""
        x = self.bn(self.conv(h_s.reshape(h_s.shape[0], -1, 1, 1)), weight)
        return F.relu(x).flatten(1)

    def teacher_head(self, h: Tensor) -> Tensor:
        """The teacher's classifier applied to ``h`` with its parameters detached."""
        (head,) = self._teacher_head
        if isinstance(head, nn.Linear):
            bias = None if head.bias is None else head.bias.detach()
            return F.linear(h, head.weight.detach(), bias)
        state = {k: v.detach() for k, v in head.named_parameters()}
        state.update(dict(head.named_buffers()))
        return torch.func.functional_call(head, state, (h,))

    def loss(self, out: kdhub.StepOutputs) -> dict[str, Tensor]:
        opts = self.options
        h_t = out.teacher_features["pooled"][-1].flatten(1).float()
        h = self.connect(out.student_features["pooled"][-1], taught_weight(out))
        fm = (h.float() - h_t).square().mean(dim=1)
        z = self.teacher_head(h)
        if opts.sr_loss == "mse":
            sr = (z.float() - out.teacher_logits.float()).square().mean(dim=1)
        else:
            t = opts.temperature if opts.temperature is not None else 1.0
            sr = kl_per_sample(z, out.teacher_logits, t) * (t * t)
        return {"fm": opts.fm_weight * fm, "sr": opts.sr_weight * sr}


def _teacher_classifier(ctx: kdhub.SetupContext, t_dim: int) -> nn.Module:
    names = ctx.teacher_taps.get("classifier")
    if not names or ctx.teacher is None:
        have = ", ".join(sorted(ctx.teacher_taps)) or "none"
        raise kdhub.IncompatibleError(
            f"method 'srrl' needs the teacher's classifier (role 'classifier'), which the teacher model "
            f"does not name (it names: {have})"
        )
    name = names[-1].partition(":")[0]
    head = dict(ctx.teacher.named_modules()).get(name)
    if head is None:
        raise kdhub.IncompatibleError(f"method 'srrl': the teacher has no module {name!r} (role 'classifier')")
    param = next(head.parameters(), None)
    probe = torch.zeros(2, t_dim, device=param.device if param is not None else ctx.device)
    was_training = head.training
    head.eval()  # the probe must not touch running statistics
    try:
        with torch.no_grad():
            logits = head(probe)
    except Exception as exc:  # any failure means the head does not take the pooled feature
        raise kdhub.IncompatibleError(
            f"method 'srrl': the teacher's classifier {name!r} does not take its pooled feature of size {t_dim}: {exc}"
        ) from exc
    finally:
        head.train(was_training)
    if tuple(logits.shape) != (2, ctx.num_classes):
        raise kdhub.IncompatibleError(
            f"method 'srrl': the teacher's classifier {name!r} maps its pooled feature to {tuple(logits.shape[1:])}, "
            f"not to the {ctx.num_classes} class logits"
        )
    return head
