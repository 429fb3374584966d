"""CIFAR VGG with batch norm (Simonyan & Zisserman, 2015) as RepDistiller defines it: vgg8, 11, 13, 16, 19."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from kdhub_zoo.models._common import TappedNet, ZooModel, init_fan_out

# Channels of the convs of each of the five blocks (RepDistiller's cfg 'S', 'A', 'B', 'D', 'E').
CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _block(channels: tuple[int, ...], in_channels: int) -> nn.Sequential:
    """conv3x3(bias)-BN-ReLU repeated, without the final ReLU (it is the net's own ``relu<i>`` module)."""
    layers: list[nn.Module] = []
    for c in channels:
        layers += [nn.Conv2d(in_channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        in_channels = c
    return nn.Sequential(*layers[:-1])


class VGG(TappedNet):
    """Five conv blocks with max-pooling between the first four, global average pooling and one linear layer.

    Module names follow RepDistiller's ``vgg.py`` (``block0..4``, ``classifier``). As there, the
    pooling after block 3 is used only for inputs of 64 pixels or more.
    """

    # added by name (add_module) in __init__
    block0: nn.Sequential
    block1: nn.Sequential
    block2: nn.Sequential
    block3: nn.Sequential
    block4: nn.Sequential
    relu0: nn.ReLU
    relu1: nn.ReLU
    relu2: nn.ReLU
    relu3: nn.ReLU
    relu4: nn.ReLU

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        cfg = CONFIGS[depth]
        self.num_convs = [len(c) for c in cfg]
        previous = in_channels
        for i, channels in enumerate(cfg):
            self.add_module(f"block{i}", _block(channels, previous))
            self.add_module(f"relu{i}", nn.ReLU())  # not in place: its input is the pre-activation tap
            previous = channels[-1]
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2) if image_size >= 64 else nn.Identity()
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(previous, num_classes)
        init_fan_out(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.pool3(self.relu3(self.block3(x)))
        x = self.pool4(self.relu4(self.block4(x)))
        return self.classifier(self.flatten(x))

    def feature_taps(self) -> dict[str, list[str]]:
        stages = (1, 2, 3, 4)
        return {
            "stem": ["relu0"],
            "stages": [f"relu{i}" for i in stages],
            "preact_stages": [f"relu{i}:input" for i in stages],
            "bn_before_relu": [f"block{i}.{3 * self.num_convs[i] - 2}" for i in stages],
            "pooled": ["flatten"],
            "classifier": ["classifier"],
        }


class _VGGModel(ZooModel):
    depth: ClassVar[int] = 13
    family_doc = """
        Paper: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
        Recognition", ICLR 2015; the CIFAR version with batch norm and a single linear classifier of
        RepDistiller's ``models/vgg.py`` (its ``vgg*_bn``, which RepDistiller and mdistiller call ``vgg*``).
        Convs keep their bias; init as in RepDistiller (linear N(0, 0.01)).

        Feature roles: ``stem`` (block 0 after its ReLU), ``stages`` (blocks 1..4 after their last ReLU),
        ``preact_stages`` (the same before it), ``bn_before_relu`` (the last BN of blocks 1..4, for OFD),
        ``pooled`` [B, 512], ``classifier``. No options. Recipe (CIFAR-100): lr 0.05, 240 epochs::

            student: {name}
        """

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return VGG(self.depth, num_classes, in_channels, image_size)


class VGG8(_VGGModel):
    """VGG-8 with BN for CIFAR: one conv per block (3.97M parameters at 100 classes)."""

    name = "vgg8"
    depth = 8


class VGG11(_VGGModel):
    """VGG-11 with BN for CIFAR: 1-1-2-2-2 convs per block (9.28M parameters at 100 classes)."""

    name = "vgg11"
    depth = 11


class VGG13(_VGGModel):
    """VGG-13 with BN for CIFAR: two convs per block (9.46M parameters at 100 classes)."""

    name = "vgg13"
    depth = 13


class VGG16(_VGGModel):
    """VGG-16 with BN for CIFAR: 2-2-3-3-3 convs per block (14.77M parameters at 100 classes)."""

    name = "vgg16"
    depth = 16


class VGG19(_VGGModel):
    """VGG-19 with BN for CIFAR: 2-2-4-4-4 convs per block (20.09M parameters at 100 classes)."""

    name = "vgg19"
    depth = 19
