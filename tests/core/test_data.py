"""Device data: the class-balanced validation split and on-device augmentation."""

import torch

from kdhub.contract.dataset import Augmentation, DataBundle, TensorSplit
from kdhub.engine.data import DeviceData, augment, class_balanced_split


def test_validation_split_takes_round_fraction_of_each_class():
    labels = torch.tensor([0] * 40 + [1] * 10 + [2] * 3)
    gen = torch.Generator().manual_seed(0)
    kept, held = class_balanced_split(labels, 0.05, gen)
    # round(0.05 * 40) = 2, round(0.05 * 10) = round(0.5) = 1 (half up), round(0.15) = 0
    assert torch.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]
    assert sorted(kept.tolist() + held.tolist()) == list(range(len(labels)))
    again, _ = class_balanced_split(labels, 0.05, torch.Generator().manual_seed(0))
    assert torch.equal(kept, again)


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    gen = torch.Generator().manual_seed(3)
    out = augment(images, Augmentation(crop_padding=1), gen)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    for i in range(2):
        windows = [padded[i, :, y : y + 4, x : x + 4] for y in range(3) for x in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_mirrors_about_half_the_batch():
    images = torch.arange(4, dtype=torch.uint8).view(1, 1, 1, 4).repeat(1000, 1, 1, 1)
    out = augment(images, Augmentation(horizontal_flip=True), torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 3).float().mean().item()
    assert 0.45 < flipped < 0.55
    assert torch.equal(out[out[:, 0, 0, 0] == 3][0, 0, 0], torch.tensor([3, 2, 1, 0], dtype=torch.uint8))


def test_batches_cover_the_training_split_once_and_are_normalised():
    n = 10
    bundle = DataBundle(
        train=TensorSplit(torch.full((n, 1, 2, 2), 255, dtype=torch.uint8), torch.arange(n) % 2),
        test=TensorSplit(torch.zeros((4, 1, 2, 2), dtype=torch.uint8), torch.arange(4) % 2),
        num_classes=2,
        mean=(0.5,),
        std=(0.5,),
    )
    data = DeviceData(bundle, torch.device("cpu"), val_fraction=0.2, seed=0)
    assert data.num_train == 8
    assert len(data.splits["val"]) == 2
    seen = torch.cat([idx for _, _, idx in data.train_batches(3, drop_last=False)])
    assert sorted(seen.tolist()) == list(range(8))
    x, _, _ = next(data.train_batches(3, drop_last=False))
    assert torch.allclose(x, torch.ones_like(x))  # (1 - 0.5) / 0.5
    assert data.steps_per_epoch(3, drop_last=True) == 2


def test_train_fraction_keeps_a_class_balanced_subset():
    n = 100
    bundle = DataBundle(
        train=TensorSplit(torch.zeros((n, 1, 2, 2), dtype=torch.uint8), torch.arange(n) % 4),
        test=TensorSplit(torch.zeros((4, 1, 2, 2), dtype=torch.uint8), torch.arange(4)),
        num_classes=4,
        mean=(0.5,),
        std=(0.5,),
    )
    data = DeviceData(bundle, torch.device("cpu"), val_fraction=0.2, seed=0, train_fraction=0.5)
    # 25 per class; 5 to validation; half of the remaining 20 = 10 per class for training
    assert torch.bincount(data.splits["train"].labels).tolist() == [10] * 4
    assert torch.bincount(data.splits["val"].labels).tolist() == [5] * 4


def test_augmented_batches_keep_the_standard_memory_format():
    """The crop gathers pixels in NHWC order; the batch must come back NCHW (channels_last is an opt-in)."""
    images = torch.zeros((4, 3, 8, 8), dtype=torch.uint8)
    out = augment(images, Augmentation(crop_padding=2, horizontal_flip=True), torch.Generator().manual_seed(0))
    assert out.is_contiguous()
