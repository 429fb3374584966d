"""Random images of any shape, with a learnable class signal: for tests and speed measurements."""

from __future__ import annotations

import os

import torch
from pydantic import Field, model_validator

import kdhub


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable; elsewhere the physical size)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def peak_bytes(o: Synthetic.Options) -> int:
    """Memory ``load()`` needs: the uint8 images of both splits plus three float32 temporaries of the larger."""
    pixels = o.channels * o.image_size * o.image_size
    return (o.train_size + o.test_size) * pixels + 3 * 4 * max(o.train_size, o.test_size) * pixels


class Synthetic(kdhub.Dataset):
    """Synthetic uint8 images of any shape: a fixed random pattern per class plus noise.

    Shaped like CIFAR-100 by default; ``signal`` sets how learnable the classes are (0 = pure noise)::

        data: {name: synthetic, options: {num_classes: 100, image_size: 32, train_size: 2048}}
    """

    name = "synthetic"

    class Options(kdhub.Options):
        num_classes: int = Field(100, ge=2, le=100000, description="number of classes")
        channels: int = Field(3, ge=1, le=16, description="image channels")
        image_size: int = Field(32, ge=4, le=1024, description="height and width")
        train_size: int = Field(2048, ge=2, le=10_000_000, description="training images")
        test_size: int = Field(512, ge=1, le=10_000_000, description="test images")
        signal: kdhub.FiniteFloat = Field(0.5, ge=0, le=1, description="weight of the class pattern against the noise")
        seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the images (independent of the run seed)")
        crop_padding: int = Field(0, ge=0, le=16, description="random-crop padding in training")
        horizontal_flip: bool = Field(False, description="random horizontal flips in training")

        @model_validator(mode="after")
        def _fits_in_memory(self) -> Synthetic.Options:
            need = peak_bytes(self)
            have = available_memory()
            if have is not None and need > have:
                raise ValueError(
                    f"{self.train_size:,} + {self.test_size:,} images of {self.channels}x{self.image_size}x"
                    f"{self.image_size} need about {need / 2**30:.1f} GiB to generate, this machine has "
                    f"{have / 2**30:.1f} GiB available (lower train_size, test_size or image_size)"
                )
            return self

    options: Options

    def load(self) -> kdhub.DataBundle:
        o = self.options
        gen = torch.Generator().manual_seed(o.seed)
        patterns = torch.rand(o.num_classes, o.channels, o.image_size, o.image_size, generator=gen)

        def make(n: int) -> kdhub.TensorSplit:
            labels = torch.arange(n) % o.num_classes
            labels = labels[torch.randperm(n, generator=gen)]
            noise = torch.rand(n, o.channels, o.image_size, o.image_size, generator=gen)
            images = (o.signal * patterns[labels] + (1 - o.signal) * noise) * 255
            return kdhub.TensorSplit(images.round().to(torch.uint8), labels)

        return kdhub.DataBundle(
            train=make(o.train_size),
            test=make(o.test_size),
            num_classes=o.num_classes,
            mean=(0.5,) * o.channels,
            std=(0.29,) * o.channels,
            augmentation=kdhub.Augmentation(o.crop_padding, o.horizontal_flip),
        )
