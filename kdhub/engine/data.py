"""The engine's view of data (:class:`DataSource`) and its in-memory implementation.

Small datasets live on the device as uint8 tensors and are augmented there (:class:`DeviceData`);
datasets kept on disk are streamed by a DataLoader (:class:`kdhub.engine.stream.StreamData`).
The engine reaches data only through :class:`DataSource`, built by :func:`open_data` from what a
dataset plugin's ``load()`` returns, so other data paths (files streamed by a DataLoader) plug in
behind the same contract: the same splits, batches, sample indices and resumable state.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from kdhub.contract.dataset import Augmentation, DataBundle, FileDataset, TensorSplit
from kdhub.engine.splits import _hold_out, class_balanced_split
from kdhub.engine.stream import LoaderOptions, StreamData

__all__ = ["Batch", "DataSource", "DeviceData", "augment", "class_balanced_split", "digest", "open_data"]

Batch = tuple[Tensor, Tensor, Tensor]
"""(normalised images on the device, labels, sample indices into the split)."""


@runtime_checkable
class DataSource(Protocol):
    """What the engine needs from data: splits ``train`` / ``val`` (optional) / ``test``, batches and state.

    The validation split is held out of the training set by the engine's rule
    (:func:`class_balanced_split` with the run seed), so every data path gives the same split.
    Under torchrun each process sees its shard of every batch (training) or every
    ``world_size``-th batch (evaluation); indices are positions in the split.
    """

    num_classes: int
    class_names: list[str]
    in_channels: int
    image_size: int

    def has(self, split: str) -> bool:
        """Whether the split exists (``val`` / ``holdout`` only with ``data.val_fraction`` / ``holdout_fraction``)."""
        ...

    def size(self, split: str) -> int:
        """Number of samples in a split (all processes together)."""
        ...

    def labels(self, split: str) -> Tensor:
        """Labels of every sample of a split, in index order (int64, on the device)."""
        ...

    def example(self, count: int = 2) -> Tensor:
        """``count`` normalised, un-augmented training images on the device (for dry-run shapes)."""
        ...

    def steps_per_epoch(self, batch_size: int, drop_last: bool) -> int:
        """Optimizer steps per epoch for a global ``batch_size``."""
        ...

    def train_batches(self, batch_size: int, drop_last: bool) -> Iterator[Batch]:
        """One epoch of shuffled, augmented training batches (global ``batch_size``, this process's shard)."""
        ...

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Un-augmented batches of a split in index order (this process's share)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs to continue with the same batches."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def describe(self, split: str) -> dict[str, Any]:
        """What the run records about a split (its MLflow dataset input), computed once per run.

        ``{"name": dataset plugin name, "source": root folder / URL / dataset name, "digest": 16 hex
        chars of the split's content, "num_samples": int, "shape": [C, H, W], "num_classes": int}``;
        for ``val`` also ``"indices_digest"``: 16 hex chars of the held-out training indices (two
        runs with the same seed and ``val_fraction`` share it).
        """
        ...

    def stats(self) -> dict[str, float]:
        """Data-path metrics since the last call, summed over processes (e.g. skipped unreadable images)."""
        ...


def digest(*tensors: Tensor) -> str:
    """16 hex characters (SHA-256) of the tensors' shapes, dtypes and bytes, in order."""
    h = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()[:16]


def augment(images: Tensor, aug: Augmentation, generator: torch.Generator) -> Tensor:
    """Random crop (zero padding) and horizontal flip of a uint8 batch, all on its device."""
    b, _, h, w = images.shape
    if aug.crop_padding > 0:
        p = aug.crop_padding
        padded = F.pad(images, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (b,), device=images.device, generator=generator)
        ox = torch.randint(0, 2 * p + 1, (b,), device=images.device, generator=generator)
        rows = (oy[:, None] + torch.arange(h, device=images.device))[:, :, None]
        cols = (ox[:, None] + torch.arange(w, device=images.device))[:, None, :]
        batch = torch.arange(b, device=images.device)[:, None, None]
        # contiguous: the gather leaves NHWC strides, which would run the model channels-last unasked
        images = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
    if aug.horizontal_flip:
        flip = torch.rand(b, device=images.device, generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


class DeviceData:
    """Train / validation / test splits on the device, batched and normalised there.

    ``indices`` handed out with training batches index the training split (after the validation
    split is removed), so methods with per-sample memory (CRD) can use them.
    """

    def __init__(
        self,
        bundle: DataBundle,
        device: torch.device,
        val_fraction: float,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        train_fraction: float = 1.0,
        holdout_fraction: float = 0.0,
        name: str = "data",
    ) -> None:
        self.bundle = bundle
        self.name = name
        self.device = device
        self.num_classes = bundle.num_classes
        self.class_names = list(bundle.class_names)
        self.in_channels = bundle.in_channels
        self.image_size = bundle.image_size
        split_gen = torch.Generator().manual_seed(seed)
        kept, held = class_balanced_split(bundle.train.labels, val_fraction, split_gen)
        kept, holdout = _hold_out(bundle.train.labels, kept, holdout_fraction, split_gen)
        if train_fraction < 1:
            _, used = class_balanced_split(bundle.train.labels[kept], train_fraction, split_gen)
            kept = kept[used]
        self.splits: dict[str, TensorSplit] = {
            "train": _to(bundle.train.subset(kept), device),
            "test": _to(bundle.test, device),
        }
        for split_name, index in (("val", held), ("holdout", holdout)):
            if len(index):
                self.splits[split_name] = _to(bundle.train.subset(index), device)
        self.held_out = held
        self._descriptions: dict[str, dict[str, Any]] = {}
        self.mean = torch.tensor(bundle.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(bundle.std, device=device).view(1, -1, 1, 1)
        self.generator = torch.Generator(device=device).manual_seed(seed + 1)
        self.rank, self.world_size = rank, world_size

    @property
    def num_train(self) -> int:
        return len(self.splits["train"])

    def has(self, split: str) -> bool:
        return split in self.splits

    def size(self, split: str) -> int:
        return len(self.splits[split])

    def labels(self, split: str) -> Tensor:
        return self.splits[split].labels

    def example(self, count: int = 2) -> Tensor:
        return self.normalise(self.splits["train"].images[:count])

    def normalise(self, images: Tensor) -> Tensor:
        return (images.float().div_(255) - self.mean) / self.std

    def steps_per_epoch(self, batch_size: int, drop_last: bool) -> int:
        n = self.num_train
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    def train_batches(self, batch_size: int, drop_last: bool) -> Iterator[Batch]:
        """Shuffled, augmented, normalised batches (x, y, index); under DDP each rank gets its shard."""
        split = self.splits["train"]
        order = torch.randperm(len(split), device=self.device, generator=self.generator)
        for step in range(self.steps_per_epoch(batch_size, drop_last)):
            index = order[step * batch_size : (step + 1) * batch_size]
            if self.world_size > 1:
                index = index[self.rank :: self.world_size]
            images = augment(split.images[index], self.bundle.augmentation, self.generator)
            yield self.normalise(images), split.labels[index], index

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Un-augmented batches of a split in order; under DDP each rank takes every world_size-th batch."""
        data = self.splits[split]
        starts = range(self.rank * batch_size, len(data), batch_size * self.world_size)
        for start in starts:
            index = torch.arange(start, min(start + batch_size, len(data)), device=self.device)
            yield self.normalise(data.images[index]), data.labels[index], index

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def describe(self, split: str) -> dict[str, Any]:
        """See :meth:`DataSource.describe`; the digest hashes the split's uint8 images and labels."""
        if split not in self._descriptions:
            data = self.splits[split]
            info: dict[str, Any] = {
                "name": self.name,
                "source": self.bundle.source or self.name,
                "digest": digest(data.images, data.labels),
                "num_samples": len(data),
                "shape": list(data.images.shape[1:]),
                "num_classes": self.num_classes,
            }
            if split == "val":
                info["indices_digest"] = digest(self.held_out)
            self._descriptions[split] = info
        return dict(self._descriptions[split])

    @property
    def normalization(self) -> dict[str, list[float]]:
        """The input transform the network was trained with: ``(pixel / 255 - mean) / std`` per channel."""
        return {"mean": [float(v) for v in self.bundle.mean], "std": [float(v) for v in self.bundle.std]}

    def stats(self) -> dict[str, float]:
        return {}


def open_data(
    loaded: DataBundle | FileDataset,
    device: torch.device,
    *,
    val_fraction: float,
    train_fraction: float,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    holdout_fraction: float = 0.0,
    name: str = "data",
    loader: Any = None,
) -> DataSource:
    """The data source for what a dataset plugin's ``load()`` returned (``name``: the dataset plugin's).

    The engine holds out, by the run seed and class-balanced: ``val`` (``val_fraction`` of the
    training set), then ``holdout`` (``holdout_fraction`` of what is left: a second, nested
    validation split for searches), then keeps ``train_fraction`` of the rest for training.
    ``loader`` (the run's ``data`` config or a :class:`~kdhub.engine.stream.LoaderOptions`) sets the
    workers, prefetch, pinning, decoding and error handling of streamed datasets.
    """
    if isinstance(loaded, DataBundle):
        return DeviceData(loaded, device, val_fraction, seed, rank, world_size, train_fraction, holdout_fraction, name)
    if isinstance(loaded, FileDataset):
        options = loader if isinstance(loader, LoaderOptions) else LoaderOptions.from_config(loader)
        return StreamData(
            loaded, device, val_fraction, seed, rank, world_size, train_fraction, options, holdout_fraction
        )
    raise TypeError(
        f"a dataset's load() returned {type(loaded).__name__}; expected a kdhub.DataBundle or kdhub.FileDataset"
    )


def _to(split: TensorSplit, device: torch.device) -> TensorSplit:
    return TensorSplit(split.images.to(device), split.labels.to(device))
