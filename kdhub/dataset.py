"""The dataset contract: tensors of uint8 images that the engine keeps on the device."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from kdhub.base import Plugin

__all__ = ["Augmentation", "DataBundle", "Dataset", "TensorSplit"]


@dataclass
class TensorSplit:
    """``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be [N] and match the images")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, index: Tensor) -> TensorSplit:
        return TensorSplit(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation done on the device: random crop with padding, horizontal flip."""

    crop_padding: int = 0
    horizontal_flip: bool = False


@dataclass
class DataBundle:
    """A dataset's train and test splits with what the engine needs to feed a model."""

    train: TensorSplit
    test: TensorSplit
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: Augmentation = field(default_factory=Augmentation)
    class_names: list[str] = field(default_factory=list)
    source: str = ""
    """Where the data came from (a folder, a URL, a loader), recorded with the run; default the dataset's name."""

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]


class Dataset(Plugin):
    """Base of every dataset plugin: ``load()`` returns a :class:`DataBundle` on the CPU."""

    kind: ClassVar[str] = "dataset"

    @abstractmethod
    def load(self) -> DataBundle:
        """The train and test splits (uint8 images on the CPU) with classes, normalisation and augmentation.

        Raise :class:`kdhub.KdhubError` with one line naming the file or folder for bad data.
        """
