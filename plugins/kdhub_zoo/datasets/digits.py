"""scikit-learn's handwritten digits (embedded: no download)."""

from __future__ import annotations

import torch
from pydantic import Field

import kdhub


class Digits(kdhub.Dataset):
    """scikit-learn's 1,797 handwritten digits, 8x8 grey images, 10 classes (ships with scikit-learn).

    The 0..16 pixel values are scaled to 0..255; the test split is a class-stratified fraction fixed by
    ``split_seed``. No augmentation by default (8x8 images)::

        data: {name: digits, batch_size: 64}
    """

    name = "digits"

    class Options(kdhub.Options):
        test_fraction: float = Field(0.25, gt=0, lt=1, description="stratified fraction of the 1,797 images for test")
        split_seed: int = Field(0, ge=0, description="seed of the train/test split (fixed across runs)")
        horizontal_flip: bool = Field(
            False, description="random horizontal flips in training (digits are not symmetric)"
        )

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
