"""MobileNetV1 for ImageNet in mdistiller's layout (the student of the ImageNet resnet50 -> MobileNetV1 pair)."""

from __future__ import annotations

from torch import Tensor, nn

from kdhub_zoo.models._common import TappedNet, ZooModel

# (out channels, stride) of the 13 depthwise-separable blocks after the stem conv (32 channels, stride 2)
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
STAGE_ENDS = (3, 5, 11, 13)  # blocks whose output ends a stage: 128, 256, 512 and 1024 channels


def conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def conv_dw(cin: int, cout: int, stride: int, last_relu_in_place: bool = True) -> nn.Sequential:
    """Depthwise 3x3 conv-BN-ReLU, pointwise 1x1 conv-BN-ReLU (indices 0..5, as mdistiller's)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=last_relu_in_place),
    )


class MobileNetV1Net(TappedNet):
    """``model`` = stem + 13 blocks + average pool, ``fc``: mdistiller's parameter names, any input size.

    mdistiller pools with ``AvgPool2d(7)`` (224x224 inputs only); here the pool is adaptive, which is
    the same at 224 and has no parameters, so checkpoints load both ways. The last ReLU of each
    stage-ending block is not in place, so its input (the pre-activation) can be tapped.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, 32, 2)]
        cin = 32
        for i, (cout, stride) in enumerate(BLOCKS, start=1):
            layers.append(conv_dw(cin, cout, stride, last_relu_in_place=i not in STAGE_ENDS))
            cin = cout
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.model(x)))

    def feature_taps(self) -> dict[str, list[str]]:
        return {
            "stem": ["model.0"],
            "stages": [f"model.{i}" for i in STAGE_ENDS],
            "preact_stages": [f"model.{i}.5:input" for i in STAGE_ENDS],
            "bn_before_relu": [f"model.{i}.4" for i in STAGE_ENDS],
            "pooled": ["flatten"],
            "classifier": ["fc"],
        }


class MobileNetV1(ZooModel):
    """MobileNetV1 (Howard et al. 2017, width 1.0) in mdistiller's ImageNet layout: 4.23M parameters.

    Paper: A. G. Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
    Applications", arXiv 2017. The ImageNet student of the resnet50 -> MobileNetV1 pair in mdistiller
    (megvii-research/mdistiller, ``mdistiller/models/imagenet/mobilenetv1.py``) and the TLLM paper's
    Table 3: a 3x3 stride-2 stem conv (32 channels) and 13 depthwise-separable blocks (depthwise 3x3
    conv-BN-ReLU, pointwise 1x1 conv-BN-ReLU) to 1024 channels, global average pooling, linear
    classifier. Parameter names are mdistiller's (``model.<i>.<j>``, ``fc``), so its checkpoints load
    as ``teacher.weights`` and kdhub's load in mdistiller; 4,231,976 parameters with 1000 classes (the
    count of mdistiller's model). PyTorch's default initialisation, as mdistiller.

    Feature roles (mdistiller's ``feats``): ``stem``; ``stages`` = blocks 3, 5, 11, 13 (128, 256, 512,
    1024 channels at strides 4, 8, 16, 32); ``preact_stages`` (their input to the last ReLU, OFD);
    ``bn_before_relu`` (mdistiller's ``get_bn_before_relu``); ``pooled`` [B, 1024]; ``classifier``::

        student: mobilenetv1
        teacher: {name: "torchvision:resnet50", options: {weights: IMAGENET1K_V1}}
    """

    name = "mobilenetv1"

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return MobileNetV1Net(num_classes, in_channels)
