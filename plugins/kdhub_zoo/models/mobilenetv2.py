"""MobileNetV2 (Sandler et al., 2018) for CIFAR as RepDistiller defines it (``mobile_half``: width 0.5)."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

import kdhub
from kdhub_zoo.models._common import TappedNet, ZooModel, init_fan_out

# expansion (None = the model's), channels, blocks, first stride: RepDistiller's CIFAR setting.
SETTING: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
STAGE_GROUPS = (1, 2, 4, 6)  # the block groups whose outputs RepDistiller takes as features


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (linear bottleneck), + input if same shape."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(TappedNet):
    """CIFAR MobileNetV2: stride-2 stem, 7 groups of inverted residuals, 1x1 conv to 1280, pool, linear.

    Module names follow RepDistiller's ``mobilenetv2.py`` (``conv1, blocks.i.j.conv, conv2, classifier.0``).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width_mult: float = 0.5, expand_ratio: int = 6) -> None:
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in SETTING:
            out = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, expand_ratio if t is None else t))
                channels = out
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, self.last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        init_fan_out(self, linear_std=0.01)

    def _group(self, g: int) -> nn.Sequential:
        group = self.blocks[g]
        assert isinstance(group, nn.Sequential)
        return group

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        return self.classifier(self.flatten(self.avgpool(self.conv2(x))))

    def feature_taps(self) -> dict[str, list[str]]:
        stages = [f"blocks.{g}" for g in STAGE_GROUPS]
        return {
            "stem": ["conv1"],
            "stages": stages,
            "preact_stages": stages,  # linear bottlenecks: no ReLU ends a stage
            "bn_before_relu": [f"blocks.{g}.{len(self._group(g)) - 1}.conv.7" for g in STAGE_GROUPS],
            "pooled": ["flatten"],
            "classifier": ["classifier.0"],
        }


class MobileNetV2Model(ZooModel):
    """MobileNetV2 for CIFAR at width 0.5 (RepDistiller's ``mobile_half``): 0.81M parameters at 100 classes."""

    name = "mobilenetv2"
    family_doc = """
        Paper: M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2: Inverted Residuals and
        Linear Bottlenecks", CVPR 2018; the CIFAR network of RepDistiller's ``models/mobilenetv2.py``
        (``mobile_half`` = width 0.5, expansion 6, the student of the resnet50 -> MobileNetV2 pair of
        RepDistiller, mdistiller and TLLM). The 1x1 head conv keeps 1280 channels for widths <= 1.
        Global pooling is adaptive (28x28 and 32x32 work). Init as in RepDistiller.

        Feature roles: ``stem`` (the stride-2 conv-BN-ReLU), ``stages`` (block groups 1, 2, 4 and 6, as
        RepDistiller), ``preact_stages`` (the same modules: a linear bottleneck ends without ReLU, so
        these features already carry negative values), ``bn_before_relu`` (the last BN of each of those
        groups, as RepDistiller), ``pooled`` [B, 1280], ``classifier``. Recipe (CIFAR-100): lr 0.01::

            student: {name}
        """

    class Options(kdhub.Options):
        width: kdhub.FiniteFloat = Field(
            0.5, gt=0, le=4, description="width multiplier of every layer (0.5 in the KD papers)"
        )
        expansion: int = Field(6, ge=1, le=16, description="expansion ratio t of the inverted residuals")

    options: Options

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return MobileNetV2(num_classes, in_channels, self.options.width, self.options.expansion)
