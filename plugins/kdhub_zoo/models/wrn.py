"""Wide residual networks (Zagoruyko & Komodakis, 2016) as RepDistiller defines them, and ``wrn:<d>_<w>``."""

from __future__ import annotations

import re
from typing import ClassVar

import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

import kdhub
from kdhub_zoo.models._common import TappedNet, ZooModel, init_fan_out


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the (1x1-projected) input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        # Not in place: in a stage's first block, bn1's output is the previous stage's pre-activation tap.
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # As in the reference: the shortcut takes x itself when the shapes agree, else the activated x.
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class NetworkBlock(nn.Module):
    """One stage: ``n`` wide blocks, the first one changing width and stride (module ``layer``)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        blocks = [
            WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(n)
        ]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(TappedNet):
    """WRN-depth-width for 32x32 inputs: conv3x3(16), three stages of (depth-4)/6 blocks, BN-ReLU, pool, fc.

    Module names follow RepDistiller's ``wrn.py`` (``conv1, block1..3.layer.i, bn1, fc``).
    """

    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()  # not in place: its input is the last pre-activation tap
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels[3], num_classes)
        init_fan_out(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.flatten(self.avgpool(self.relu(self.bn1(x)))))

    def feature_taps(self) -> dict[str, list[str]]:
        bns = ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]
        return {
            "stem": ["conv1"],
            "stages": ["block1", "block2", "block3"],
            "preact_stages": bns,
            "bn_before_relu": bns,
            "pooled": ["flatten"],
            "classifier": ["fc"],
        }


class _WRNOptions(kdhub.Options):
    drop_rate: kdhub.FiniteFloat = Field(
        0.0, ge=0, lt=1, description="dropout between the two convs of each block (0 = none)"
    )


class _WRNModel(ZooModel):
    depth: ClassVar[int] = 40
    width: ClassVar[int] = 2
    Options = _WRNOptions
    options: _WRNOptions
    family_doc = """
        Paper: S. Zagoruyko, N. Komodakis, "Wide Residual Networks", BMVC 2016; the exact network of
        RepDistiller's ``models/wrn.py`` (Tian et al., ICLR 2020), also used by mdistiller. Global average
        pooling is adaptive, so 28x28 and 32x32 inputs work. Init as in RepDistiller.

        Feature roles, as RepDistiller reads them from this pre-activation network: ``stem`` (first conv),
        ``stages`` (the raw outputs of ``block1..3``: residual sums, not activated), ``preact_stages``
        (those outputs after the BN that precedes the next ReLU: ``block2.layer.0.bn1``,
        ``block3.layer.0.bn1``, ``bn1``), ``bn_before_relu`` (the same three BNs, for OFD),
        ``pooled`` [B, C], ``classifier``. So ``relu(preact_stages[i])`` is the activated stage, and
        ``preact_stages[i] = bn_before_relu[i](stages[i])``. Recipe (CIFAR-100): lr 0.05, 240 epochs::

            teacher: {name}
        """

    def wrn_shape(self) -> tuple[int, int]:
        return self.depth, self.width

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        depth, width = self.wrn_shape()
        return WideResNet(depth, width, num_classes, in_channels, self.options.drop_rate)


class WRN16x1(_WRNModel):
    """WRN-16-1: 2 blocks per stage, 16/32/64 channels (0.18M parameters at 100 classes)."""

    name = "wrn_16_1"
    depth, width = 16, 1


class WRN16x2(_WRNModel):
    """WRN-16-2: 2 blocks per stage, 32/64/128 channels (0.70M parameters at 100 classes)."""

    name = "wrn_16_2"
    depth, width = 16, 2


class WRN40x1(_WRNModel):
    """WRN-40-1: 6 blocks per stage, 16/32/64 channels (0.57M parameters at 100 classes)."""

    name = "wrn_40_1"
    depth, width = 40, 1


class WRN40x2(_WRNModel):
    """WRN-40-2: 6 blocks per stage, 32/64/128 channels (2.26M parameters at 100 classes)."""

    name = "wrn_40_2"
    depth, width = 40, 2


_VARIANT = re.compile(r"^(\d+)_(\d+)$")


class WRN(_WRNModel):
    """WRN-depth-width of any size, named ``wrn:<depth>_<width>`` (e.g. ``wrn:28_10``; depth = 6n+4)."""

    name = "wrn"
    family_doc = _WRNModel.family_doc.replace("teacher: {name}", "teacher: wrn:28_10")

    class Options(_WRNOptions):
        variant: str = Field(description="'<depth>_<width>' with depth = 6n+4, e.g. '28_10' (from 'wrn:28_10')")

        @field_validator("variant")
        @classmethod
        def _check(cls, value: str) -> str:
            match = _VARIANT.match(value)
            if match is None:
                raise ValueError(f"expected '<depth>_<width>' such as '28_10', got {value!r}")
            depth, width = int(match[1]), int(match[2])
            if (depth - 4) % 6 != 0 or depth < 10 or depth > 1000 or not 1 <= width <= 64:
                raise ValueError(f"WRN depth must be 6n+4 (10..1000) and width 1..64, got {value!r}")
            return value

    options: Options

    def wrn_shape(self) -> tuple[int, int]:
        depth, width = self.options.variant.split("_")
        return int(depth), int(width)
