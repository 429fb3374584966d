"""CIFAR-10 and CIFAR-100 through torchvision, with the standard augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

import kdhub

from ._torchvision import check_root, to_split


class _Cifar(kdhub.Dataset):
    torchvision_class: ClassVar[str] = ""
    num_classes: ClassVar[int] = 0
    mean: ClassVar[tuple[float, float, float]] = (0.0, 0.0, 0.0)
    std: ClassVar[tuple[float, float, float]] = (1.0, 1.0, 1.0)

    class Options(kdhub.Options):
        root: str = Field("data", min_length=1, max_length=4096, description="torchvision root folder")
        download: bool = Field(True, description="download with torchvision when missing")
        crop_padding: int = Field(4, ge=0, le=16, description="random crop 32 with this padding (0 = none)")
        horizontal_flip: bool = Field(True, description="random horizontal flips in training")

    options: Options

    def load(self) -> kdhub.DataBundle:
        from torchvision import datasets

        cls = getattr(datasets, self.torchvision_class)
        check_root(self.options.root)
        try:
            train = cls(self.options.root, train=True, download=self.options.download)
            test = cls(self.options.root, train=False, download=self.options.download)
        except (RuntimeError, OSError) as err:
            raise kdhub.KdhubError(f"{self.name}: {err}") from None
        return kdhub.DataBundle(
            train=to_split(train.data, train.targets),
            test=to_split(test.data, test.targets),
            num_classes=self.num_classes,
            mean=self.mean,
            std=self.std,
            augmentation=kdhub.Augmentation(self.options.crop_padding, self.options.horizontal_flip),
            class_names=list(train.classes),
            source=str(Path(self.options.root).resolve()),
        )


class CIFAR10(_Cifar):
    """CIFAR-10 (Krizhevsky 2009): 50,000 + 10,000 32x32 colour images, 10 classes.

    Standard augmentation: random crop 32 with padding 4, horizontal flip::

        data: {name: cifar10, options: {root: data}, batch_size: 64}
    """

    name = "cifar10"
    torchvision_class = "CIFAR10"
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)


class CIFAR100(_Cifar):
    """CIFAR-100 (Krizhevsky 2009): 50,000 + 10,000 32x32 colour images, 100 classes.

    The RepDistiller/mdistiller recipe: random crop 32 with padding 4, horizontal flip, normalisation
    with mean (0.5071, 0.4867, 0.4408) and std (0.2675, 0.2565, 0.2761)::

        data: {name: cifar100, options: {root: data}, batch_size: 64}
    """

    name = "cifar100"
    torchvision_class = "CIFAR100"
    num_classes = 100
    mean = (0.5071, 0.4867, 0.4408)
    std = (0.2675, 0.2565, 0.2761)
