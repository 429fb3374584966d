"""scikit-learn's handwritten digits (embedded: no download)."""

from __future__ import annotations

import gzip
import importlib.util
import math
from pathlib import Path

import numpy as np
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
        raw_images, target = _digits()
        images = torch.from_numpy((raw_images * (255.0 / 16.0)).round()).to(torch.uint8).unsqueeze(1)
        labels = torch.from_numpy(target).long()
        train_rows, test_rows = stratified_split(target, self.options.test_fraction, self.options.split_seed)
        train_idx, test_idx = torch.from_numpy(train_rows), torch.from_numpy(test_rows)
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


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images ``[N, 8, 8]`` (0..16) and labels of scikit-learn's ``load_digits``.

    Read from the file scikit-learn ships, without importing scikit-learn (a second of CPU at every
    start of a run: its import pulls in SciPy); through ``load_digits`` where that file is not found.
    """
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                data = np.loadtxt(handle, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    raw = load_digits()
    return raw.images, raw.target


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices: scikit-learn's ``train_test_split(range(n), test_size=test_fraction,
    random_state=seed, stratify=labels)``, step by step (its ``StratifiedShuffleSplit``), without it."""
    n = len(labels)
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(counts)):
        members = by_class[i].take(rng.permutation(counts[i]), mode="clip")
        train.extend(members[: n_i[i]])
        test.extend(members[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of ``draws`` come from each class: the floored proportional share, the rest given to the
    largest remainders, ties broken at random (scikit-learn's ``_approximate_mode``)."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add = min(len(tied), need)
            floored[rng.choice(tied, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)
