"""scikit-learn's handwritten digits (embedded: no download)."""

from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator

import kdhub

IMAGES, CLASSES = 1797, 10


class Digits(kdhub.Dataset):
    """scikit-learn's 1,797 handwritten digits, 8x8 grey images, 10 classes (ships with scikit-learn).

    The 0..16 pixel values are scaled to 0..255; the test split is a class-stratified fraction fixed by
    ``split_seed``. No augmentation by default (8x8 images)::

        data: {name: digits, batch_size: 64}
    """

    name = "digits"

    class Options(kdhub.Options):
        test_fraction: kdhub.FiniteFloat = Field(
            0.25, gt=0, lt=1, description="stratified fraction of the 1,797 images for test"
        )
        split_seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the train/test split (fixed across runs)")
        horizontal_flip: bool = Field(
            False, description="random horizontal flips in training (digits are not symmetric)"
        )

        @field_validator("test_fraction")
        @classmethod
        def _both_splits_hold_every_class(cls, value: float) -> float:
            test = math.ceil(value * IMAGES)  # scikit-learn's rounding of a float test_size
            train = IMAGES - test
            if min(train, test) < CLASSES:
                split = "training" if train < test else "test"
                low, high = math.ceil(CLASSES / IMAGES * 1000) / 1000, math.floor((1 - CLASSES / IMAGES) * 1000) / 1000
                raise ValueError(
                    f"{value} leaves {min(train, test)} {split} images for {CLASSES} classes (use {low} .. {high})"
                )
            return value

    options: Options

    def load(self) -> kdhub.DataBundle:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        raw = load_digits()
        images = torch.from_numpy((raw.images * (255.0 / 16.0)).round()).to(torch.uint8).unsqueeze(1)
        labels = torch.from_numpy(raw.target).long()
        train_idx, test_idx = train_test_split(
            list(range(len(labels))),
            test_size=self.options.test_fraction,
            random_state=self.options.split_seed,
            stratify=raw.target,
        )
        train = kdhub.TensorSplit(images[train_idx], labels[train_idx])
        test = kdhub.TensorSplit(images[test_idx], labels[test_idx])
        pixels = train.images.float() / 255
        return kdhub.DataBundle(
            train=train,
            test=test,
            num_classes=10,
            mean=(pixels.mean().item(),),
            std=(pixels.std().item(),),
            augmentation=kdhub.Augmentation(horizontal_flip=self.options.horizontal_flip),
            class_names=[str(d) for d in range(10)],
            source="sklearn.datasets.load_digits",
        )
