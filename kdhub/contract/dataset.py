"""The dataset contract: what a dataset plugin's ``load()`` returns.

Two shapes, one engine contract (:class:`kdhub.engine.data.DataSource`):

- :class:`DataBundle`: small data as uint8 tensors that the engine keeps on the device and augments
  there (digits, Fashion-MNIST, CIFAR).
- :class:`FileDataset`: data that stays on disk (image files, or any map-style dataset), streamed by
  a ``DataLoader``, decoded with ``torchvision.io`` and augmented with a named
  ``torchvision.transforms.v2`` preset (:class:`ImageTransforms`), normalised on the device.

Either way the engine, not the dataset, owns the validation split, shuffling, sharding and the
resumable position.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from kdhub.contract.base import Plugin

__all__ = ["Augmentation", "DataBundle", "Dataset", "FileDataset", "FileSplit", "ImageTransforms", "TensorSplit"]


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


Preset = Literal["imagenet", "cifar", "resize"]


@dataclass(frozen=True)
class ImageTransforms:
    """How streamed images become model inputs: a named preset and its sizes (``torchvision.transforms.v2``).

    - ``imagenet``: training ``RandomResizedCrop(size, scale)`` + flip (+ ``ColorJitter(brightness)``
      when > 0); evaluation ``Resize(resize)`` + ``CenterCrop(size)``.
    - ``cifar``: training ``Resize(size)`` (a no-op for images of that size) + ``RandomCrop(size,
      padding)`` + flip; evaluation ``Resize(size)`` + ``CenterCrop(size)``.
    - ``resize``: ``Resize(size)`` + ``CenterCrop(size)`` for training and evaluation (+ flip in
      training when ``flip``).

    ``rand_augment: m`` (1..10, 0 = off) adds ``RandAugment(num_ops=2, magnitude=m,
    num_magnitude_bins=11)`` after the crop and flip: m on timm's 0..10 scale (DeiT's ``rand-m9``).
    """

    preset: Preset = "imagenet"
    size: int = 224
    resize: int = 256
    padding: int = 4
    flip: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    brightness: float = 0.0
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    rand_augment: int = 0

    def __post_init__(self) -> None:
        if self.preset not in ("imagenet", "cifar", "resize"):
            raise ValueError(f"unknown transform preset {self.preset!r} (imagenet, cifar, resize)")
        if self.size < 1 or self.resize < 1 or self.padding < 0:
            raise ValueError("size and resize must be >= 1 and padding >= 0")
        if not 0 <= self.rand_augment <= 10:
            raise ValueError(f"rand_augment must be 0 (off) .. 10, got {self.rand_augment}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")


@dataclass
class FileSplit:
    """A split that stays on disk: image files with labels, or any map-style dataset.

    ``files`` are paths relative to ``root`` (JPEG, PNG, WebP or GIF, decoded by ``torchvision.io``).
    Without files, ``dataset[i]`` must return ``(image, label)`` where the image is a uint8
    ``[C, H, W]`` tensor, a PIL image or the encoded bytes as a 1-D uint8 tensor. ``labels`` (int64
    ``[N]``) are needed up front: the engine splits and counts classes without reading images.
    """

    labels: Tensor
    files: Sequence[str] | None = None
    root: str = ""
    dataset: Any | None = None

    def __post_init__(self) -> None:
        self.labels = torch.as_tensor(self.labels).long()
        if self.labels.dim() != 1:
            raise ValueError("labels must be a 1-D tensor")
        if (self.files is None) == (self.dataset is None):
            raise ValueError("give either files or a map-style dataset")
        count = len(self.files) if self.files is not None else len(self.dataset)  # type: ignore[arg-type]
        if count != len(self.labels):
            raise ValueError(f"{count} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def name_of(self, index: int) -> str:
        """The file of sample ``index`` relative to ``root`` (its index for a map-style dataset)."""
        return str(self.files[index]) if self.files is not None else str(index)


@dataclass
class FileDataset:
    """A dataset streamed from disk: train and test :class:`FileSplit` and how to turn images into inputs.

    ``name`` (the dataset plugin) and ``source`` (the root folder or URL) describe the data in run
    logs; ``channels`` is 3 (RGB) or 1 (grey): every image is converted on decoding.
    """

    train: FileSplit
    test: FileSplit
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transforms: ImageTransforms = field(default_factory=ImageTransforms)
    class_names: list[str] = field(default_factory=list)
    channels: int = 3
    name: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def image_size(self) -> int:
        return self.transforms.size


class Dataset(Plugin):
    """Base of every dataset plugin: ``load()`` returns a :class:`DataBundle` or a :class:`FileDataset`."""

    kind: ClassVar[str] = "dataset"

    @abstractmethod
    def load(self) -> DataBundle | FileDataset:
        """The data: a :class:`DataBundle` (uint8 tensors on the CPU, kept on the device) or, for data too
        large for memory, a :class:`FileDataset` (files or a map-style dataset, streamed by a DataLoader).

        Raise :class:`kdhub.KdhubError` with one line naming the file or folder for bad data.
        """
