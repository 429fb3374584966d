"""CIFAR ResNets (He et al., 2016) as RepDistiller and mdistiller define them: resnet8 … resnet110, x4 widths."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from kdhub_zoo.models._common import TappedNet, ZooModel, init_fan_out


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) input, then a separate ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        self.relu_out = nn.ReLU()  # its own module, not in place: its input is the pre-activation tap

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu_out(out + residual)  # not +=: bn2's output stays intact for taps


class CifarResNet(TappedNet):
    """Three stages of ``(depth - 2) / 6`` basic blocks at full, 1/2 and 1/4 resolution.

    Module names follow RepDistiller's ``resnet.py`` (``conv1, bn1, layer1..3, fc``), so its
    state dicts load as they are; the added ReLU, pooling and flatten modules hold no parameters.
    """

    # added by name (add_module) in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(self, depth: int, filters: tuple[int, int, int, int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        self.blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, filters[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = filters[0]
        for i, (planes, stride) in enumerate(zip(filters[1:], (1, 2, 2), strict=True), start=1):
            blocks = [BasicBlock(inplanes, planes, stride)]
            blocks += [BasicBlock(planes, planes) for _ in range(1, self.blocks_per_stage)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # RepDistiller's AvgPool2d(8) at 32x32, and any input size
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(filters[3], num_classes)
        init_fan_out(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))

    def feature_taps(self) -> dict[str, list[str]]:
        last = [f"layer{i}.{self.blocks_per_stage - 1}" for i in (1, 2, 3)]
        return {
            "stem": ["relu"],
            "stages": ["layer1", "layer2", "layer3"],
            "preact_stages": [f"{b}.relu_out:input" for b in last],
            "bn_before_relu": [f"{b}.bn2" for b in last],
            "pooled": ["flatten"],
            "classifier": ["fc"],
        }


class _CifarResNetModel(ZooModel):
    depth: ClassVar[int] = 20
    filters: ClassVar[tuple[int, int, int, int]] = (16, 16, 32, 64)
    family_doc = """
        Paper: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
        (the CIFAR variant, Sec. 4.2); the exact network of RepDistiller's ``models/resnet.py`` (Tian et al.,
        ICLR 2020), also used by mdistiller. Global average pooling is adaptive, so 28x28 and 32x32 inputs
        work. Weights are initialised as in RepDistiller (Kaiming fan-out convs, BN 1/0).

        Feature roles: ``stem`` (after the first conv-BN-ReLU), ``stages`` (``layer1..3``),
        ``preact_stages`` (the same before the last block's final ReLU, as RepDistiller's ``preact=True``),
        ``bn_before_relu`` (the last block's ``bn2`` of each stage, for OFD), ``pooled`` [B, C], ``classifier``.
        No options. Recipe (CIFAR-100): lr 0.05, 240 epochs::

            student: {name}
        """

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return CifarResNet(self.depth, self.filters, num_classes, in_channels)


class ResNet8(_CifarResNetModel):
    """CIFAR ResNet-8: 1 basic block per stage, 16/32/64 channels (0.08M parameters at 100 classes)."""

    name = "resnet8"
    depth = 8


class ResNet14(_CifarResNetModel):
    """CIFAR ResNet-14: 2 basic blocks per stage, 16/32/64 channels (0.18M parameters at 100 classes)."""

    name = "resnet14"
    depth = 14


class ResNet20(_CifarResNetModel):
    """CIFAR ResNet-20: 3 basic blocks per stage, 16/32/64 channels (0.28M parameters at 100 classes)."""

    name = "resnet20"
    depth = 20


class ResNet32(_CifarResNetModel):
    """CIFAR ResNet-32: 5 basic blocks per stage, 16/32/64 channels (0.47M parameters at 100 classes)."""

    name = "resnet32"
    depth = 32


class ResNet44(_CifarResNetModel):
    """CIFAR ResNet-44: 7 basic blocks per stage, 16/32/64 channels (0.67M parameters at 100 classes)."""

    name = "resnet44"
    depth = 44


class ResNet56(_CifarResNetModel):
    """CIFAR ResNet-56: 9 basic blocks per stage, 16/32/64 channels (0.86M parameters at 100 classes)."""

    name = "resnet56"
    depth = 56


class ResNet110(_CifarResNetModel):
    """CIFAR ResNet-110: 18 basic blocks per stage, 16/32/64 channels (1.74M parameters at 100 classes)."""

    name = "resnet110"
    depth = 110


class ResNet8x4(_CifarResNetModel):
    """CIFAR ResNet-8x4: ResNet-8 with 4x the channels (32 stem, 64/128/256), 1.23M parameters at 100 classes."""

    name = "resnet8x4"
    depth = 8
    filters = (32, 64, 128, 256)


class ResNet32x4(_CifarResNetModel):
    """CIFAR ResNet-32x4: ResNet-32 with 4x the channels (32 stem, 64/128/256), 7.43M parameters at 100 classes."""

    name = "resnet32x4"
    depth = 32
    filters = (32, 64, 128, 256)
