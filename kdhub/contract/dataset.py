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

import math
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from kdhub.contract.base import Plugin
from kdhub.contract.errors import ContractError

__all__ = ["Augmentation", "DataBundle", "Dataset", "FileDataset", "FileSplit", "ImageTransforms", "TensorSplit"]

_REQUIRED: Any = object()
"""The default of a required DataBundle field: ``__post_init__`` refuses it, after checking the splits."""


@dataclass
class TensorSplit:
    """``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            _wrong("TensorSplit.images", "a uint8 torch.Tensor [N, C, H, W]", images)
        if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point or labels.is_complex():
            _wrong("TensorSplit.labels", "an integer torch.Tensor [N] of class indices", labels)
        if labels.dtype == torch.bool:
            _wrong("TensorSplit.labels", "an integer torch.Tensor [N] of class indices", labels)
        if labels.shape[0] != images.shape[0]:
            _wrong("TensorSplit.labels", f"one label per image ({images.shape[0]})", labels)
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, index: Tensor) -> TensorSplit:
        return TensorSplit(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation done on the device: random crop with padding, horizontal flip."""

    crop_padding: int = 0
    horizontal_flip: bool = False

    def __post_init__(self) -> None:
        if not _is_int(self.crop_padding) or self.crop_padding < 0:
            _wrong(
                "Augmentation.crop_padding", "an int >= 0 (pixels of padding before the random crop)", self.crop_padding
            )
        if not isinstance(self.horizontal_flip, bool):
            _wrong("Augmentation.horizontal_flip", "a bool", self.horizontal_flip)


@dataclass
class DataBundle:
    """A dataset's train and test splits with what the engine needs to feed a model."""

    train: TensorSplit
    test: TensorSplit
    # required: the stand-in default lets a wrong split be named before a missing field
    num_classes: int = _REQUIRED
    mean: tuple[float, ...] = _REQUIRED
    std: tuple[float, ...] = _REQUIRED
    augmentation: Augmentation = field(default_factory=Augmentation)
    class_names: list[str] = field(default_factory=list)
    source: str = ""
    """Where the data came from (a folder, a URL, a loader), recorded with the run; default the dataset's name."""

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            if not isinstance(getattr(self, split), TensorSplit):
                _wrong(f"DataBundle.{split}", "a kdhub.TensorSplit(images, labels)", getattr(self, split))
        missing = [name for name in ("num_classes", "mean", "std") if getattr(self, name) is _REQUIRED]
        if missing:
            raise ContractError(f"DataBundle: {', '.join(missing)} must be given (required fields){_maker()}")
        if self.test.images.shape[1:] != self.train.images.shape[1:]:
            _wrong(
                "DataBundle.test",
                f"images of the training images' [C, H, W] {tuple(self.train.images.shape[1:])}",
                self.test.images,
            )
        _check_classes("DataBundle", self.num_classes, (self.train.labels, self.test.labels))
        self.mean, self.std = _check_normalisation("DataBundle", self.mean, self.std, self.train.images.shape[1])
        if not isinstance(self.augmentation, Augmentation):
            _wrong(
                "DataBundle.augmentation",
                "a kdhub.Augmentation(crop_padding=..., horizontal_flip=...)",
                self.augmentation,
            )
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        _check_names("DataBundle", self.class_names, self.num_classes)
        if not isinstance(self.source, str):
            _wrong("DataBundle.source", "a str (a folder, a URL or a loader's name)", self.source)

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
        try:
            labels = torch.as_tensor(self.labels)
        except (TypeError, ValueError, RuntimeError):
            _wrong("FileSplit.labels", "an integer torch.Tensor [N] (or a list of ints)", self.labels)
        if labels.dim() != 1 or labels.dtype.is_floating_point or labels.is_complex() or labels.dtype == torch.bool:
            _wrong("FileSplit.labels", "an integer torch.Tensor [N] (or a list of ints)", self.labels)
        self.labels = labels.long()
        if (self.files is None) == (self.dataset is None):
            raise ContractError(f"FileSplit: give either files or a map-style dataset{_maker()}")
        if self.files is not None and (isinstance(self.files, (str, bytes)) or not isinstance(self.files, Sequence)):
            _wrong("FileSplit.files", "a sequence of paths relative to root", self.files)
        if not isinstance(self.root, str):
            _wrong("FileSplit.root", "a str (the folder the files are relative to)", self.root)
        if self.dataset is not None and not (hasattr(self.dataset, "__getitem__") and hasattr(self.dataset, "__len__")):
            _wrong("FileSplit.dataset", "a map-style dataset (__getitem__ and __len__)", self.dataset)
        count = len(self.files) if self.files is not None else len(self.dataset)  # type: ignore[arg-type]
        if count != len(self.labels):
            raise ContractError(f"FileSplit.labels: {count} images but {len(self.labels)} labels{_maker()}")

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
        for split in ("train", "test"):
            if not isinstance(getattr(self, split), FileSplit):
                _wrong(f"FileDataset.{split}", "a kdhub.FileSplit(labels, files=..., root=...)", getattr(self, split))
        if not _is_int(self.channels) or self.channels not in (1, 3):
            _wrong("FileDataset.channels", "1 (grey) or 3 (RGB)", self.channels)
        _check_classes("FileDataset", self.num_classes, (self.train.labels, self.test.labels))
        self.mean, self.std = _check_normalisation("FileDataset", self.mean, self.std, self.channels)
        if not isinstance(self.transforms, ImageTransforms):
            _wrong("FileDataset.transforms", "a kdhub.ImageTransforms(preset=..., size=...)", self.transforms)
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        _check_names("FileDataset", self.class_names, self.num_classes)
        for text in ("name", "source"):
            if not isinstance(getattr(self, text), str):
                _wrong(f"FileDataset.{text}", "a str", getattr(self, text))

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


# checking the contract where it is built -----------------------------------------------------------


def _maker() -> str:
    """`` (dataset plugin 'name', module.Class)`` for the plugin whose code is building a contract object."""
    import sys

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Plugin):
            cls = type(owner)
            return f" ({owner.kind or 'a'} plugin {owner.name!r}, {cls.__module__}.{cls.__qualname__})"
        frame = frame.f_back  # type: ignore[assignment]
    return ""


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # a NumPy array, say
        return f"a {type(value).__module__}.{type(value).__name__} ({value.dtype}) of shape {list(value.shape)}"
    text = " ".join(repr(value).split())
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _wrong(field_path: str, expected: str, got: Any) -> Any:
    """Raise the one line of a wrong contract field: the field, what it must be, what it is, and the plugin."""
    raise ContractError(f"{field_path}: expected {expected}, got {_describe(got)}{_maker()}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_classes(owner: str, num_classes: Any, labels: tuple[Tensor, ...]) -> None:
    if not _is_int(num_classes) or num_classes < 1:
        _wrong(f"{owner}.num_classes", "an int >= 1", num_classes)
    for split, values in zip(("train", "test"), labels, strict=True):
        if len(values) and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ContractError(
                f"{owner}.{split}: labels must be class indices 0..{num_classes - 1}, found"
                f" {int(values.min())}..{int(values.max())}{_maker()}"
            )


def _check_normalisation(owner: str, mean: Any, std: Any, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``mean`` and ``std`` as tuples: one number per channel, on the 0..1 scale of ``pixel / 255``."""
    found = []
    for name, values, low in (("mean", mean, 0.0), ("std", std, 0.0)):
        expected = f"{channels} number{'s' if channels > 1 else ''} (one per channel) on the 0..1 scale of pixel / 255"
        if isinstance(values, Tensor):
            values = values.tolist()
        if not isinstance(values, (tuple, list)) or len(values) != channels:
            _wrong(f"{owner}.{name}", expected, values)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            _wrong(f"{owner}.{name}", expected, values)
        numbers = tuple(float(v) for v in values)
        if not all(math.isfinite(v) and low <= v <= 1.0 for v in numbers) or (name == "std" and min(numbers) <= 0):
            scale = " (0..255 values? divide them by 255)" if max(numbers, default=0) > 1 else ""
            raise ContractError(
                f"{owner}.{name}: expected {expected}{', each > 0' if name == 'std' else ''},"
                f" got {numbers}{scale}{_maker()}"
            )
        found.append(numbers)
    return found[0], found[1]


def _check_names(owner: str, names: Any, num_classes: int) -> None:
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        _wrong(f"{owner}.class_names", f"a list of {num_classes} str", names)
    if len(names) != num_classes:
        raise ContractError(f"{owner}.class_names: {len(names)} names for {num_classes} classes{_maker()}")
