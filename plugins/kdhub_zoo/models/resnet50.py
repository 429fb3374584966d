"""ResNet-50 for CIFAR (He et al., 2016) as RepDistiller defines it (``resnetv2.py``: 3x3 stem, no max-pool)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from kdhub_zoo.models._common import TappedNet, ZooModel, init_fan_out


class Bottleneck(nn.Module):
    """1x1-BN-ReLU-3x3(stride)-BN-ReLU-1x1(x4)-BN, plus the (projected) input, then a separate ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        self.relu_out = nn.ReLU()  # not in place: its input is the pre-activation tap

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu_out(out + self.shortcut(x))  # not +=: bn3's output stays intact for taps


class CifarResNetV2(TappedNet):
    """conv3x3(64)-BN-ReLU at full resolution, four bottleneck stages (64/128/256/512 x4), pool, linear.

    Module names follow RepDistiller's ``resnetv2.py`` (``conv1, bn1, layer1..4, linear``).
    """

    # added by name (add_module) in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, num_blocks: tuple[int, int, int, int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 64
        for i, (planes, n, stride) in enumerate(
            zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2), strict=True), start=1
        ):
            blocks = [Bottleneck(in_planes, planes, stride)]
            in_planes = planes * Bottleneck.expansion
            blocks += [Bottleneck(in_planes, planes) for _ in range(1, n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(in_planes, num_classes)
        init_fan_out(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.flatten(self.avgpool(x)))

    def feature_taps(self) -> dict[str, list[str]]:
        last = [f"layer{i}.{n - 1}" for i, n in enumerate(self.num_blocks, start=1)]
        return {
            "stem": ["relu"],
            "stages": ["layer1", "layer2", "layer3", "layer4"],
            "preact_stages": [f"{b}.relu_out:input" for b in last],
            "bn_before_relu": [f"{b}.bn3" for b in last],
            "pooled": ["flatten"],
            "classifier": ["linear"],
        }


class _CifarResNetV2Model(ZooModel):
    num_blocks: ClassVar[tuple[int, int, int, int]] = (3, 4, 6, 3)
    family_doc = """
        Paper: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016;
        the CIFAR version of RepDistiller's ``models/resnetv2.py`` (3x3 stride-1 stem without max-pool,
        so 32x32 inputs reach 4x4 in the last stage), teacher of the resnet50 -> MobileNetV2 pair of
        RepDistiller, mdistiller and TLLM. Init as in RepDistiller (Kaiming fan-out, no zero-init).

        Feature roles: ``stem``, ``stages`` (``layer1..4``), ``preact_stages`` (the same before the last
        block's final ReLU), ``bn_before_relu`` (the last block's ``bn3`` of each stage, for OFD),
        ``pooled`` [B, 2048], ``classifier``. No options. Recipe (CIFAR-100): lr 0.05, 240 epochs::

            teacher: {name}
        """

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return CifarResNetV2(self.num_blocks, num_classes, in_channels)


class ResNet50(_CifarResNetV2Model):
    """ResNet-50 for CIFAR: bottleneck stages of 3/4/6/3 blocks (23.71M parameters at 100 classes)."""

    name = "resnet50"
