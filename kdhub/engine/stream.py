"""Streaming data: image files decoded and augmented by DataLoader workers, normalised on the device.

:class:`StreamData` is the :class:`~kdhub.engine.data.DataSource` for a :class:`kdhub.FileDataset`.
It keeps every exactness rule of the in-memory path:

- the validation split is held out of the training set by index with
  :func:`~kdhub.engine.data.class_balanced_split` and the run seed (the same rule, so the same
  indices for the same labels);
- the training order of epoch ``e`` is a permutation drawn from ``(seed, e)``; a global batch is cut
  from it and rank ``r`` of ``W`` takes ``batch[r::W]`` (disjoint shards, a new shuffle each epoch);
- the augmentation of a sample is drawn from a generator seeded by ``(seed, epoch, sample index)``,
  so the images do not depend on the number of workers, the prefetch depth or the rank;
- the resumable position is (epochs completed, batches taken in the current epoch): resuming gives
  the same batches, so the same weights.

Workers read and decode files with ``torchvision.io`` and apply the ``torchvision.transforms.v2``
preset named by :class:`kdhub.ImageTransforms`; uint8 batches travel (pinned on CUDA) and are
normalised on the device. With ``data.decode: device`` the workers only read the files and JPEGs are
decoded in batches on the run's device (nvJPEG on CUDA), then augmented there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from kdhub.contract.dataset import FileDataset, FileSplit, ImageTransforms
from kdhub.contract.errors import KdhubError
from kdhub.engine.imagesize import DEFAULT_MAX_PIXELS, too_large
from kdhub.engine.splits import _hold_out, class_balanced_split

__all__ = ["LoaderOptions", "StreamData", "build_transforms", "default_workers", "sample_seed"]

log = logging.getLogger("kdhub")

_MASK64 = (1 << 64) - 1
_TRAIN, _TEST = 0, 1  # which FileSplit of the bundle a sample comes from


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation, a mix (splitmix64) of the run seed, epoch and index."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xD1B54A32D192ED03 + index * 0x94D049BB133111EB + 1) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) & ((1 << 63) - 1)


def default_workers() -> int:
    """Loader workers per process: the cores this process may use (its share under torchrun) minus one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(cores // local - 1, 32))


@dataclass(frozen=True)
class LoaderOptions:
    """How the DataLoader runs (from ``data.workers``, ``data.prefetch`` ... of the run config)."""

    workers: int | None = None
    prefetch: int = 2
    pin_memory: bool = True
    decode: str = "workers"
    on_error: str = "raise"
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_config(cls, data: Any) -> LoaderOptions:
        return cls(
            workers=getattr(data, "workers", None),
            prefetch=getattr(data, "prefetch", 2),
            pin_memory=getattr(data, "pin_memory", True),
            decode=getattr(data, "decode", "workers"),
            on_error=getattr(data, "on_error", "raise"),
            max_pixels=getattr(data, "max_pixels", DEFAULT_MAX_PIXELS),
        )


def build_transforms(spec: ImageTransforms) -> tuple[Any, Any]:
    """(training, evaluation) ``torchvision.transforms.v2`` pipelines of a preset, on uint8 ``[C, H, W]``."""
    from torchvision.transforms import v2

    mode = v2.InterpolationMode.BICUBIC if spec.interpolation == "bicubic" else v2.InterpolationMode.BILINEAR
    flip = [v2.RandomHorizontalFlip()] if spec.flip else []
    jitter = [v2.ColorJitter(brightness=spec.brightness)] if spec.brightness > 0 else []
    if spec.rand_augment:  # magnitude m of 10, as timm's rand-m<m> (DeiT)
        jitter.insert(0, v2.RandAugment(2, spec.rand_augment, num_magnitude_bins=11, interpolation=mode))
    fit = [v2.Resize(spec.size, interpolation=mode, antialias=True), v2.CenterCrop(spec.size)]
    if spec.preset == "imagenet":
        train = [v2.RandomResizedCrop(spec.size, scale=spec.scale, interpolation=mode, antialias=True), *flip]
        evaluate = [v2.Resize(spec.resize, interpolation=mode, antialias=True), v2.CenterCrop(spec.size)]
    elif spec.preset == "cifar":
        train = [*fit, v2.RandomCrop(spec.size, padding=spec.padding), *flip]
        evaluate = fit
    else:  # resize
        train, evaluate = [*fit, *flip], fit
    return v2.Compose(train + jitter), v2.Compose(evaluate)


def _clean(err: BaseException) -> str:
    """torchvision's C++ errors without their source location: 'decode_jpeg, x.cpp:171, Image is ...'."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r"^.*?\.cpp:\d+, ", "", text)[:200]


Item = tuple[int, int, int, int]
"""(position in the split, source split, index in the source split, augmentation seed or -1)."""


class _Reader(torch.utils.data.Dataset):
    """Reads, decodes and transforms whole batches; runs in the DataLoader workers (or in-process)."""

    def __init__(
        self,
        sources: dict[int, FileSplit],
        spec: ImageTransforms,
        channels: int,
        decode: bool,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.max_pixels = max_pixels
        self.roots = {code: split.root for code, split in sources.items()}
        # file names as one numpy bytes array: no per-string objects whose refcounts would copy pages
        self.files = {
            code: np.array([os.fsencode(f) for f in split.files]) if split.files is not None else None
            for code, split in sources.items()
        }
        self.datasets = {code: split.dataset for code, split in sources.items()}
        self.spec, self.channels, self.decode = spec, channels, decode
        self.train_tf, self.eval_tf = build_transforms(spec)

    def __len__(self) -> int:
        sizes: list[int] = []
        for code, files in self.files.items():
            sizes.append(len(files) if files is not None else len(self.datasets[code]))  # type: ignore[arg-type]
        return sum(sizes)

    def name(self, code: int, index: int) -> str:
        files = self.files[code]
        if files is None:
            return f"{'train' if code == _TRAIN else 'test'}[{index}]"
        return os.path.join(self.roots[code], os.fsdecode(files[index]))

    def read(self, code: int, index: int) -> Tensor:
        """The image as a uint8 [C, H, W] tensor, or its encoded bytes (1-D) when decoding happens later."""
        from torchvision.io import read_file

        files = self.files[code]
        if files is not None:
            data = read_file(self.name(code, index))
            self._check_size(data)
            return data if self.decode else self.to_image(data)
        dataset: Any = self.datasets[code]
        image = dataset[index][0]
        if isinstance(image, Tensor) and image.dim() == 1:
            self._check_size(image)
            return image if self.decode else self.to_image(image)
        return self.to_image(image)

    def _check_size(self, encoded: Tensor) -> None:
        """Refuse, before decoding, an image whose header declares more than ``max_pixels`` (a decompression bomb)."""
        problem = too_large(encoded.numpy(), self.max_pixels)
        if problem is not None:
            raise ValueError(problem)

    def to_image(self, image: Any) -> Tensor:
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.v2 import functional as TF

        if isinstance(image, Tensor) and image.dim() == 1:
            mode = ImageReadMode.RGB if self.channels == 3 else ImageReadMode.GRAY
            image = decode_image(image, mode=mode)
        elif not isinstance(image, Tensor):  # a PIL image
            image = TF.pil_to_tensor(image.convert("RGB" if self.channels == 3 else "L"))
        if image.dtype != torch.uint8:
            image = TF.to_dtype(image, torch.uint8, scale=True)
        if image.dim() == 2:
            image = image.unsqueeze(0)
        if image.shape[0] != self.channels:
            image = TF.rgb_to_grayscale(image[:3]) if self.channels == 1 else image[:1].expand(3, -1, -1)
        return image

    def transform(self, image: Tensor, seed: int) -> Tensor:
        if seed < 0:
            return self.eval_tf(image)
        torch.default_generator.manual_seed(seed)  # v2 transforms draw from the default CPU generator
        return self.train_tf(image)

    def __getitems__(self, items: list[Item]) -> dict[str, Any]:
        images: list[Tensor] = []
        kept: list[int] = []
        failed: list[tuple[str, str]] = []
        rng = torch.default_generator.get_state()  # in-process loading must not move the run's RNG
        try:
            for i, (_, code, index, seed) in enumerate(items):
                try:
                    image = self.read(code, index)
                    images.append(image if self.decode else self.transform(image, seed))
                    kept.append(i)
                except (RuntimeError, OSError, ValueError, TypeError) as err:
                    failed.append((self.name(code, index), _clean(err)))
        finally:
            torch.default_generator.set_state(rng)
        positions = torch.tensor([items[i][0] for i in kept], dtype=torch.long)
        seeds = torch.tensor([items[i][3] for i in kept], dtype=torch.long)
        if self.decode:  # one buffer and the lengths: a tensor per file would cost a file descriptor each
            lengths = torch.tensor([len(d) for d in images], dtype=torch.long)
            data = torch.cat(images) if images else torch.empty(0, dtype=torch.uint8)
            return {"encoded": data, "lengths": lengths, "index": positions, "seeds": seeds, "failed": failed}
        size = self.spec.size
        batch = torch.stack(images) if images else torch.empty((0, self.channels, size, size), dtype=torch.uint8)
        return {"images": batch, "index": positions, "failed": failed}


class _Plan:
    """The DataLoader's batch sampler: the batches of the current pass, made lazily, replaced before each pass."""

    def __init__(self) -> None:
        self.batches: Callable[[], Iterator[list[Item]]] = lambda: iter(())
        self.count = 0

    def set(self, batches: Callable[[], Iterator[list[Item]]], count: int) -> None:
        self.batches, self.count = batches, count

    def __iter__(self) -> Iterator[list[Item]]:
        return self.batches()

    def __len__(self) -> int:
        return self.count


def _identity(batch: Any) -> Any:
    return batch


@dataclass
class _View:
    source: int
    index: Tensor  # positions in the source split, int64 on the CPU
    labels: Tensor  # on the device


class StreamData:
    """Train / validation / test splits of a :class:`FileDataset`, streamed through one DataLoader.

    One DataLoader (persistent workers) serves every pass; its batch sampler is replaced before each
    pass, so training and evaluation share the workers (passes never interleave in the engine).
    """

    def __init__(
        self,
        bundle: FileDataset,
        device: torch.device,
        val_fraction: float,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        train_fraction: float = 1.0,
        loader: LoaderOptions | None = None,
        holdout_fraction: float = 0.0,
    ) -> None:
        self.bundle, self.device, self.seed = bundle, device, seed
        self.rank, self.world_size = rank, world_size
        self.options = loader or LoaderOptions()
        if self.options.on_error not in ("raise", "skip"):
            raise KdhubError(f"data.on_error: {self.options.on_error!r} is not one of raise, skip")
        self.num_classes = bundle.num_classes
        self.class_names = list(bundle.class_names)
        self.in_channels = bundle.channels
        self.image_size = bundle.transforms.size
        if len(bundle.train) == 0:
            raise KdhubError(f"{bundle.name or 'dataset'}: the training split has no images")
        split_gen = torch.Generator().manual_seed(seed)
        kept, held = class_balanced_split(bundle.train.labels, val_fraction, split_gen)
        kept, holdout = _hold_out(bundle.train.labels, kept, holdout_fraction, split_gen)
        if train_fraction < 1:
            _, used = class_balanced_split(bundle.train.labels[kept], train_fraction, split_gen)
            kept = kept[used]
        self.held_out = held
        self.views: dict[str, _View] = {
            "train": self._view(_TRAIN, kept),
            "test": self._view(_TEST, torch.arange(len(bundle.test))),
        }
        for name, index in (("val", held), ("holdout", holdout)):
            if len(index):
                self.views[name] = self._view(_TRAIN, index)
        self.mean = torch.tensor(bundle.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(bundle.std, device=device).view(1, -1, 1, 1)
        decode_later = self.options.decode == "device"
        sources = {_TRAIN: bundle.train, _TEST: bundle.test}
        self.reader = _Reader(sources, bundle.transforms, bundle.channels, decode_later, self.options.max_pixels)
        self.workers = default_workers() if self.options.workers is None else self.options.workers
        self.plan = _Plan()
        self._loader: DataLoader | None = None
        self._pass = 0
        self.epochs_done, self.position = 0, 0
        self.skipped = 0
        self._warned: set[str] = set()

    def _view(self, source: int, index: Tensor) -> _View:
        split = self.bundle.train if source == _TRAIN else self.bundle.test
        return _View(source, index, split.labels[index].to(self.device))

    # the DataSource contract ------------------------------------------------------------------
    def has(self, split: str) -> bool:
        return split in self.views

    def size(self, split: str) -> int:
        return len(self.views[split].index)

    def labels(self, split: str) -> Tensor:
        return self.views[split].labels

    def example(self, count: int = 2) -> Tensor:
        view = self.views["train"]
        items = [(p, view.source, int(view.index[p]), -1) for p in range(min(count, self.size("train")))]
        x, _, _ = self._finish(self.reader.__getitems__(items), "train")
        return x

    def normalise(self, images: Tensor) -> Tensor:
        return (images.float().div_(255) - self.mean) / self.std

    def steps_per_epoch(self, batch_size: int, drop_last: bool) -> int:
        n = self.size("train")
        return n // batch_size if drop_last else -(-n // batch_size)

    def train_batches(self, batch_size: int, drop_last: bool) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """One epoch of batches (global ``batch_size``; this rank's shard); continues a resumed epoch."""
        epoch = self.epochs_done + 1
        view = self.views["train"]
        shuffle = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1))
        order = torch.randperm(self.size("train"), generator=shuffle)
        source, index, seed, rank, world = view.source, view.index, self.seed, self.rank, self.world_size
        steps = range(self.position, self.steps_per_epoch(batch_size, drop_last))

        def batches() -> Iterator[list[Item]]:  # made as the loader asks: no list of every sample up front
            for step in steps:
                chunk = order[step * batch_size : (step + 1) * batch_size][rank::world]
                yield [
                    (p, source, i, sample_seed(seed, epoch, p))
                    for p, i in zip(chunk.tolist(), index[chunk].tolist(), strict=True)
                ]

        for batch in self._stream("train", batches, len(steps)):
            self.position += 1
            yield batch
        self.epochs_done, self.position = epoch, 0

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Un-augmented batches in index order; rank ``r`` takes every ``world_size``-th batch."""
        view = self.views[split]
        n = len(view.index)
        starts = range(self.rank * batch_size, n, batch_size * self.world_size)

        def batches() -> Iterator[list[Item]]:
            for s in starts:
                index = view.index[s : s + batch_size].tolist()
                yield [(s + k, view.source, i, -1) for k, i in enumerate(index)]

        yield from self._stream(split, batches, len(starts))

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_done": self.epochs_done, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done, self.position = int(state["epochs_done"]), int(state["position"])

    def stats(self) -> dict[str, float]:
        """Images skipped as unreadable since the last call, summed over processes (``data.on_error: skip``)."""
        if self.options.on_error != "skip":
            return {}
        count = torch.tensor([float(self.skipped)], device=self.device)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(count)
        self.skipped = 0
        return {"data/skipped_images": float(count.item())}

    def describe(self, split: str) -> dict[str, Any]:
        """What MLflow logs about a split: name, source, content digest, size, input shape, classes."""
        view = self.views[split]
        files = self.bundle.train if view.source == _TRAIN else self.bundle.test
        labels = files.labels[view.index].tolist()
        pairs = sorted(zip((files.name_of(i) for i in view.index.tolist()), labels, strict=True))
        digest = hashlib.sha256("".join(f"{name}\t{label}\n" for name, label in pairs).encode()).hexdigest()
        info: dict[str, Any] = {
            "name": self.bundle.name,
            "source": self.bundle.source or files.root,
            "digest": digest[:16],
            "num_samples": len(view.index),
            "shape": [self.in_channels, self.image_size, self.image_size],
            "num_classes": self.num_classes,
        }
        if split == "val":
            held = self.held_out.numpy().astype("<i8").tobytes()
            info["indices_digest"] = hashlib.sha256(held).hexdigest()[:16]
        return info

    # loading ----------------------------------------------------------------------------------
    def loader(self) -> DataLoader:
        if self._loader is None:
            workers = self.workers
            self._loader = DataLoader(
                self.reader,
                batch_sampler=self.plan,
                num_workers=workers,
                collate_fn=_identity,
                pin_memory=self.options.pin_memory and self.device.type == "cuda" and self.options.decode != "device",
                persistent_workers=workers > 0,
                prefetch_factor=self.options.prefetch if workers > 0 else None,
                generator=torch.Generator().manual_seed(self.seed),  # its seed draws leave the run's RNG alone
            )
        return self._loader

    def _stream(
        self, split: str, batches: Callable[[], Iterator[list[Item]]], count: int
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        if not count:
            return
        self._pass += 1
        this_pass = self._pass
        self.plan.set(batches, count)
        for raw in self.loader():
            if this_pass != self._pass:
                raise RuntimeError("kdhub: two passes over streamed data were interleaved (one DataLoader serves both)")
            x, y, idx = self._finish(raw, split)
            if len(y):
                yield x, y, idx

    def _finish(self, raw: dict[str, Any], split: str) -> tuple[Tensor, Tensor, Tensor]:
        """Report failures, then move a worker's batch to the device and normalise it there."""
        failed = list(raw["failed"])
        if "encoded" in raw:
            images, index, more = self._decode_on_device(raw, split)
            failed += more
        else:
            images, index = raw["images"].to(self.device, non_blocking=True), raw["index"]
        for name, reason in failed:
            if self.options.on_error == "raise":
                raise KdhubError(f"{name}: cannot read image ({reason}); fix or remove it, or set data.on_error: skip")
            self.skipped += 1
            if name not in self._warned:
                self._warned.add(name)
                log.warning("skipped unreadable image %s (%s)", name, reason)
        index = index.to(self.device, non_blocking=True)
        return self.normalise(images), self.views[split].labels[index], index

    def _decode_on_device(self, raw: dict[str, Any], split: str) -> tuple[Tensor, Tensor, list[tuple[str, str]]]:
        """Batched JPEG decoding on the run's device (nvJPEG on CUDA), then the per-sample transforms there."""
        from torchvision.io import ImageReadMode, decode_jpeg

        encoded: list[Tensor] = list(torch.split(raw["encoded"], raw["lengths"].tolist()))
        mode = ImageReadMode.RGB if self.in_channels == 3 else ImageReadMode.GRAY
        jpeg = [i for i, data in enumerate(encoded) if len(data) > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8]
        decoded: dict[int, Tensor] = {}
        failed: list[tuple[str, str]] = []
        if jpeg:
            try:
                batch = decode_jpeg([encoded[i] for i in jpeg], mode=mode, device=self.device)
                decoded = dict(zip(jpeg, batch, strict=True))
            except RuntimeError:  # find the broken file(s) one by one; they fail again below with their reason
                for i in jpeg:
                    with contextlib.suppress(RuntimeError):
                        decoded[i] = decode_jpeg(encoded[i], mode=mode, device=self.device)
        positions, seeds = raw["index"].tolist(), raw["seeds"].tolist()
        images, kept = [], []
        rng = torch.default_generator.get_state()
        try:
            for i, data in enumerate(encoded):
                try:
                    image = decoded[i] if i in decoded else self.reader.to_image(data).to(self.device)
                    images.append(self.reader.transform(image, seeds[i]))
                    kept.append(i)
                except (RuntimeError, ValueError) as err:
                    view = self.views[split]
                    failed.append((self.reader.name(view.source, int(view.index[positions[i]])), _clean(err)))
        finally:
            torch.default_generator.set_state(rng)
        size = self.image_size
        batch = torch.stack(images) if images else torch.empty((0, self.in_channels, size, size), dtype=torch.uint8)
        return batch.to(self.device), torch.tensor([positions[i] for i in kept], dtype=torch.long), failed
