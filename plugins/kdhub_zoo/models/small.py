"""Small models for tiny images (8x8 digits, 28x28 Fashion-MNIST) that train in seconds on a CPU: cnn and mlp."""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated

from pydantic import Field
from torch import Tensor, nn

import kdhub
from kdhub_zoo.models._common import TappedNet, ZooModel, init_fan_out


class ConvStage(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN, then a separate ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu_out = nn.ReLU()  # not in place: its input is the pre-activation tap

    def forward(self, x: Tensor) -> Tensor:
        return self.relu_out(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class SmallCNN(TappedNet):
    """A conv-BN-ReLU stem, ``depth`` stages doubling the channels (stride 2 after the first), pool, linear.

    Padded stride-2 convs halve any size down to 1x1 (8 -> 4 -> 2 -> 1), so 8x8 inputs work at every depth.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.depth = depth
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        channels = width
        for i in range(1, depth + 1):
            out = width * 2 ** (i - 1)
            self.add_module(f"stage{i}", ConvStage(channels, out, 1 if i == 1 else 2))
            channels = out
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        init_fan_out(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(1, self.depth + 1):
            x = getattr(self, f"stage{i}")(x)
        return self.fc(self.flatten(self.pool(x)))

    def feature_taps(self) -> dict[str, list[str]]:
        stages = [f"stage{i}" for i in range(1, self.depth + 1)]
        return {
            "stem": ["stem"],
            "stages": stages,
            "preact_stages": [f"{s}.relu_out:input" for s in stages],
            "bn_before_relu": [f"{s}.bn2" for s in stages],
            "pooled": ["flatten"],
            "classifier": ["fc"],
        }


class CNN(ZooModel):
    """A compact CNN for tiny images (digits 8x8, Fashion-MNIST 28x28): stem + 1..4 two-conv BN stages.

    kdhub's own model (no paper): ``stem`` conv3x3(width)-BN-ReLU, then ``depth`` stages of
    conv3x3-BN-ReLU-conv3x3-BN-ReLU with ``width, 2 width, 4 width, ...`` channels, stride 2 from the
    second stage on, global average pooling and a linear classifier. At width 32, depth 3 it has 0.30M
    parameters; at width 8, 19.1K (10 classes, 1 channel).

    Feature roles: ``stem``, ``stages``, ``preact_stages`` (before each stage's last ReLU),
    ``bn_before_relu`` (each stage's ``bn2``), ``pooled`` [B, width * 2^(depth-1)], ``classifier``.
    The 3-minute demo on ``digits``::

        teacher: {name: cnn, options: {width: 32}}
        student: {name: cnn, options: {width: 8}}
    """

    name = "cnn"

    class Options(kdhub.Options):
        width: int = Field(
            16, ge=1, le=1024, description="channels of the stem and the first stage (doubling per stage)"
        )
        depth: int = Field(3, ge=1, le=4, description="number of stages (2 or 3 for 8x8 inputs)")

    options: Options

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return SmallCNN(num_classes, in_channels, self.options.width, self.options.depth)


class HiddenLayer(nn.Module):
    """Linear - (BN) - ReLU; the ReLU is its own module and not in place (its input is the pre-activation)."""

    def __init__(self, fan_in: int, fan_out: int, batch_norm: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(fan_in, fan_out, bias=not batch_norm)
        self.bn = nn.BatchNorm1d(fan_out) if batch_norm else None
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x)
        return self.relu(x if self.bn is None else self.bn(x))


class MLP(TappedNet):
    """Flatten the image, hidden layers (Linear-BN-ReLU), a linear classifier."""

    def __init__(self, num_classes: int, in_features: int, hidden: list[int], batch_norm: bool = True) -> None:
        super().__init__()
        self.batch_norm = batch_norm
        self.flatten = nn.Flatten()
        sizes = [in_features, *hidden]
        self.hidden = nn.Sequential(*(HiddenLayer(a, b, batch_norm) for a, b in pairwise(sizes)))
        self.fc = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.hidden(self.flatten(x)))

    def feature_taps(self) -> dict[str, list[str]]:
        layers = [f"hidden.{i}" for i in range(len(self.hidden))]
        taps = {
            "stages": layers,
            "preact_stages": [f"{h}.relu:input" for h in layers],
            "pooled": [layers[-1]],
            "classifier": ["fc"],
        }
        if self.batch_norm:
            taps["bn_before_relu"] = [f"{h}.bn" for h in layers]
        return taps


class MLPModel(ZooModel):
    """A multi-layer perceptron on the flattened image (the weakest student of the digits demo).

    kdhub's own model (no paper): ``Flatten``, then per hidden size Linear-BN-ReLU (Linear-ReLU without
    BN), then a linear classifier. With ``hidden: [128, 64]`` on 8x8 digits: 17.4K parameters.
    ``image_size`` and ``in_channels`` fix the input size (``in_channels * image_size^2`` features).

    Feature roles: ``stages`` (each hidden activation), ``preact_stages`` (before each ReLU),
    ``bn_before_relu`` (only with ``batch_norm``), ``pooled`` (the last hidden activation), ``classifier``::

        student: {name: mlp, options: {hidden: [128, 64]}}
    """

    name = "mlp"

    class Options(kdhub.Options):
        hidden: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(
            [128, 64], min_length=1, max_length=32, description="sizes of the hidden layers, input to output"
        )
        batch_norm: bool = Field(True, description="BatchNorm1d after each hidden linear layer")

    options: Options

    @property
    def feature_roles(self) -> tuple[str, ...]:  # type: ignore[override]  # a capability an option decides
        bn = ("bn_before_relu",) if self.options.batch_norm else ()
        return ("stages", "preact_stages", *bn, "pooled", "classifier")

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        o = self.options
        return MLP(num_classes, in_channels * image_size * image_size, list(o.hidden), o.batch_norm)
