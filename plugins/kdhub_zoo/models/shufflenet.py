"""ShuffleNet V1 (Zhang et al., 2018) and V2 (Ma et al., 2018) for CIFAR as RepDistiller defines them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdhub_zoo.models._common import TappedNet, ZooModel


class ChannelShuffle(nn.Module):
    """[N, C, H, W] -> [N, g, C/g, H, W] -> transpose the group axes -> [N, C, H, W]."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


# ----------------------------------------------------------------------------------------------- V1


class ShuffleV1Block(nn.Module):
    """Grouped 1x1 - BN - ReLU - shuffle - 3x3 depthwise - BN - grouped 1x1 - BN, + shortcut, ReLU.

    With stride 2 the shortcut is a 3x3 average pooling concatenated to the branch (which then
    produces ``out_planes - in_planes`` channels, as in the reference).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        g = 1 if in_planes == 24 else groups  # the first block sees the 24-channel stem: no grouping
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle1 = ChannelShuffle(g)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, 2, 1)) if stride == 2 else nn.Sequential()
        self.relu_out = nn.ReLU()  # not in place: its input is the pre-activation tap

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return self.relu_out(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(TappedNet):
    """1x1 stem to 24 channels, three stages (240/480/960 channels; 4/8/4 blocks, groups 3), pool, linear.

    Module names follow RepDistiller's ``ShuffleNetv1.py`` (``conv1, bn1, layer1..3, linear``).
    """

    # added by name (add_module) in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 24
        for i, (planes, n) in enumerate(zip(out_planes, num_blocks, strict=True), start=1):
            blocks = [ShuffleV1Block(in_planes, planes - in_planes, 2, groups)]
            blocks += [ShuffleV1Block(planes, planes, 1, groups) for _ in range(1, n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(out_planes[2], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.flatten(self.avgpool(x)))

    def feature_taps(self) -> dict[str, list[str]]:
        last = [f"layer{i}.{n - 1}" for i, n in enumerate(self.num_blocks, start=1)]
        return {
            "stem": ["relu"],
            "stages": ["layer1", "layer2", "layer3"],
            "preact_stages": [f"{b}.relu_out:input" for b in last],
            "bn_before_relu": [f"{b}.bn3" for b in last],
            "pooled": ["flatten"],
            "classifier": ["linear"],
        }


class ShuffleV1(ZooModel):
    """ShuffleNet V1 for CIFAR: groups 3, 240/480/960 channels (0.95M parameters at 100 classes)."""

    name = "shufflev1"
    family_doc = """
        Paper: X. Zhang, X. Zhou, M. Lin, J. Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural
        Network for Mobile Devices", CVPR 2018; the CIFAR network of RepDistiller's ``ShuffleNetv1.py``
        (student of the resnet32x4 -> ShuffleV1 pair of RepDistiller, mdistiller and TLLM). PyTorch's
        default init, as there. Global pooling is adaptive (28x28 and 32x32 work).

        Feature roles: ``stem`` (the 1x1 conv-BN-ReLU), ``stages`` (``layer1..3``), ``preact_stages`` (the
        same before the last block's final ReLU), ``bn_before_relu`` (the last block's ``bn3``, whose output
        plus the identity shortcut feeds that ReLU, the same reading as ResNet's; RepDistiller offers none),
        ``pooled`` [B, 960], ``classifier``. No options. Recipe (CIFAR-100): lr 0.01::

            student: {name}
        """

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return ShuffleNetV1(num_classes, in_channels)


# ----------------------------------------------------------------------------------------------- V2


class ShuffleV2Block(nn.Module):
    """Split the channels in half; 1x1 - BN - ReLU - 3x3 depthwise - BN - 1x1 - BN on one half; concat, shuffle, ReLU.

    The reference applies the ReLU to the branch before concatenating and shuffling; the other half
    comes from a ReLU already, so shuffling first and activating everything after is the same
    function, and it makes the input of ``relu_out`` the block's pre-activation.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.split = half
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.shuffle = ChannelShuffle(2)
        self.relu_out = nn.ReLU()  # not in place: its input is the pre-activation tap

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        return self.relu_out(self.shuffle(torch.cat([x1, out], 1)))


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: branches 3x3 dw-BN-1x1-BN-ReLU and 1x1-BN-ReLU-3x3 dw-BN-1x1-BN-ReLU, concatenated, shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(TappedNet):
    """1x1 stem to 24 channels, stages of 116/232/464 channels (1 down + 3/7/3 units), 1x1 conv to 1024, linear.

    Module names follow RepDistiller's ``ShuffleNetv2.py`` (``conv1, bn1, layer1..3, conv2, bn2, linear``).
    """

    # added by name (add_module) in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024),
        num_blocks: tuple[int, int, int] = (3, 7, 3),
    ) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU(inplace=True)
        previous = 24
        for i, (channels, n) in enumerate(zip(out_channels[:3], num_blocks, strict=True), start=1):
            units = [ShuffleV2Down(previous, channels)] + [ShuffleV2Block(channels) for _ in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*units))
            previous = channels
        self.conv2 = nn.Conv2d(previous, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(out_channels[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.linear(self.flatten(self.avgpool(x)))

    def feature_taps(self) -> dict[str, list[str]]:
        # Each stage is [down unit, n units]: its last unit has index n.
        last = [f"layer{i}.{n}" for i, n in enumerate(self.num_blocks, start=1)]
        return {
            "stem": ["relu"],
            "stages": ["layer1", "layer2", "layer3"],
            "preact_stages": [f"{b}.relu_out:input" for b in last],
            "pooled": ["flatten"],
            "classifier": ["linear"],
        }


class ShuffleV2(ZooModel):
    """ShuffleNet V2 1x for CIFAR: 116/232/464 channels, 1024-d head (1.36M parameters at 100 classes)."""

    name = "shufflev2"
    family_doc = """
        Paper: N. Ma, X. Zhang, H.-T. Zheng, J. Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN
        Architecture Design", ECCV 2018; the CIFAR network of RepDistiller's ``ShuffleNetv2.py``
        (``net_size=1``). PyTorch's default init, as there. Global pooling is adaptive.

        Feature roles: ``stem``, ``stages`` (``layer1..3``), ``preact_stages`` (the same before the last
        unit's ReLU; kdhub takes it after the channel shuffle, so ``relu(preact) == stage`` channel by
        channel, where RepDistiller returns it unshuffled), ``pooled`` [B, 1024], ``classifier``.
        No ``bn_before_relu``: half of each pre-activation is an identity branch, not a BN output
        (RepDistiller does not support it as an OFD teacher either). No options. Recipe: lr 0.01::

            student: {name}
        """

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return ShuffleNetV2(num_classes, in_channels)
