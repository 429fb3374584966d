"""Dataset plugins: shapes, ranges, splits, and the real loading paths on local copies."""

from pathlib import Path

import pytest
import torch

import kdhub


def test_digits_is_embedded_stratified_and_scaled():
    bundle = kdhub.create("dataset", "digits").load()
    assert bundle.train.images.shape == (1347, 1, 8, 8)
    assert bundle.test.images.shape == (450, 1, 8, 8)
    assert bundle.train.images.dtype == torch.uint8
    assert bundle.train.images.max() == 255
    counts = torch.bincount(bundle.test.labels, minlength=10)
    assert counts.min() >= 43
    assert counts.max() <= 46
    again = kdhub.create("dataset", "digits").load()
    assert torch.equal(bundle.test.labels, again.test.labels)


@pytest.mark.parametrize(("fraction", "seed"), [(0.25, 0), (0.25, 7), (0.1, 3), (0.5, 11), (0.9, 0), (0.006, 5)])
def test_digits_are_scikit_learns_data_and_split_without_importing_it(fraction, seed):
    """The same images, labels and stratified split as ``load_digits`` + ``train_test_split``."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from kdhub_zoo.datasets.digits import stratified_split

    raw = load_digits()
    expected = train_test_split(
        list(range(len(raw.target))), test_size=fraction, random_state=seed, stratify=raw.target
    )
    train, test = stratified_split(raw.target, fraction, seed)
    assert train.tolist() == list(expected[0])
    assert test.tolist() == list(expected[1])
    bundle = kdhub.create("dataset", "digits", test_fraction=fraction, split_seed=seed).load()
    images = torch.from_numpy((raw.images * (255.0 / 16.0)).round()).to(torch.uint8).unsqueeze(1)
    assert torch.equal(bundle.test.images, images[list(expected[1])])
    assert torch.equal(bundle.train.labels, torch.from_numpy(raw.target)[list(expected[0])])
    if (fraction, seed) == (0.25, 0):  # the default split, loaded in a process of its own
        code = "import sys, kdhub; kdhub.create('dataset', 'digits').load(); print('sklearn' in sys.modules)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert done.stdout.strip() == "False"


def test_synthetic_has_the_asked_shape_and_is_deterministic():
    options = {"num_classes": 7, "channels": 2, "image_size": 12, "train_size": 70, "test_size": 14}
    a = kdhub.create("dataset", "synthetic", **options).load()
    b = kdhub.create("dataset", "synthetic", **options).load()
    assert a.train.images.shape == (70, 2, 12, 12)
    assert a.num_classes == 7
    assert torch.equal(a.train.images, b.train.images)
    assert torch.bincount(a.train.labels).tolist() == [10] * 7


def test_synthetic_classes_are_learnable():
    bundle = kdhub.create("dataset", "synthetic", num_classes=5, train_size=50, test_size=50, signal=0.8).load()
    means = torch.stack([bundle.train.images[bundle.train.labels == c].float().mean(0) for c in range(5)])
    distances = torch.cdist(bundle.test.images.float().flatten(1), means.flatten(1))
    assert (distances.argmin(1) == bundle.test.labels).float().mean() > 0.9


DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_copy(tmp_path):
    bundle = kdhub.create("dataset", "fashion_mnist", root=str(tmp_path), download=False).load()
    assert bundle.train.images.shape == (60000, 1, 28, 28)
    assert bundle.test.images.shape == (10000, 1, 28, 28)
    assert bundle.class_names[9] == "Ankle boot"
    assert torch.bincount(bundle.test.labels).tolist() == [1000] * 10
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_fashion_mnist_without_data_or_network_is_one_clear_error(tmp_path):
    dataset = kdhub.create(
        "dataset", "fashion_mnist", root=str(tmp_path), download=False, local_copy=str(tmp_path / "none")
    )
    with pytest.raises(kdhub.KdhubError, match=r"fashion_mnist: .*dataset-fashion-mnist"):
        dataset.load()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_without_data_is_one_clear_error(tmp_path, name):
    with pytest.raises(kdhub.KdhubError, match=name):
        kdhub.create("dataset", name, root=str(tmp_path), download=False).load()
