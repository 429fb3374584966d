"""The data contract is checked where it is built: one line naming the field, the expected type and the plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import kdhub
from kdhub.cli import main
from kdhub.contract.errors import ContractError

X = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)
Y = torch.tensor([0, 1, 0, 1, 0, 1])


def split() -> kdhub.TensorSplit:
    return kdhub.TensorSplit(X, Y)


def bundle(**changes: Any) -> kdhub.DataBundle:
    fields: dict[str, Any] = {"train": split(), "test": split(), "num_classes": 2, "mean": (0.5,), "std": (0.25,)}
    return kdhub.DataBundle(**{**fields, **changes})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: bundle(train=(X, Y)), "DataBundle.train: expected a kdhub.TensorSplit(images, labels), got a tuple"),
        (
            lambda: kdhub.DataBundle(train=(X, Y), test=(X, Y)),  # type: ignore[arg-type]
            "DataBundle.train: expected a kdhub.TensorSplit(images, labels), got a tuple",
        ),
        (
            lambda: kdhub.DataBundle(train=split(), test=split(), num_classes=2),
            "DataBundle: mean, std must be given (required fields)",
        ),
        (lambda: bundle(test=[X, Y]), "DataBundle.test: expected a kdhub.TensorSplit(images, labels), got a list"),
        (lambda: bundle(augmentation="none"), "DataBundle.augmentation: expected a kdhub.Augmentation("),
        (lambda: bundle(num_classes="2"), "DataBundle.num_classes: expected an int >= 1, got str '2'"),
        (lambda: bundle(num_classes=True), "DataBundle.num_classes: expected an int >= 1, got bool True"),
        (lambda: bundle(num_classes=1), "DataBundle.train: labels must be class indices 0..0, found 0..1"),
        (lambda: bundle(mean=(127.0,)), "DataBundle.mean: expected 1 number (one per channel) on the 0..1 scale"),
        (lambda: bundle(mean=(0.5, 0.5, 0.5)), "DataBundle.mean: expected 1 number (one per channel)"),
        (lambda: bundle(std=(0.0,)), "DataBundle.std: expected 1 number (one per channel) on the 0..1 scale"),
        (lambda: bundle(std="0.2"), "DataBundle.std: expected 1 number"),
        (lambda: bundle(class_names=["a"]), "DataBundle.class_names: 1 names for 2 classes"),
        (lambda: bundle(class_names=[0, 1]), "DataBundle.class_names: expected a list of 2 str"),
        (lambda: bundle(test=kdhub.TensorSplit(X[:, :, :4], Y)), "DataBundle.test: expected images of the training"),
        (lambda: kdhub.TensorSplit(X.numpy(), Y), "TensorSplit.images: expected a uint8 torch.Tensor [N, C, H, W]"),
        (
            lambda: kdhub.TensorSplit(X.float(), Y),
            "TensorSplit.images: expected a uint8 torch.Tensor [N, C, H, W], got",
        ),
        (lambda: kdhub.TensorSplit(X, Y.float()), "TensorSplit.labels: expected an integer torch.Tensor [N]"),
        (lambda: kdhub.TensorSplit(X, Y[:3]), "TensorSplit.labels: expected one label per image (6)"),
        (lambda: kdhub.Augmentation(crop_padding=-1), "Augmentation.crop_padding: expected an int >= 0"),
        (lambda: kdhub.Augmentation(horizontal_flip="yes"), "Augmentation.horizontal_flip: expected a bool"),
        (lambda: kdhub.FileSplit([0.5, 1.5], files=["a.png", "b.png"]), "FileSplit.labels: expected an integer"),
        (lambda: kdhub.FileSplit([0, 1], files="a.png"), "FileSplit.files: expected a sequence of paths"),
        (lambda: kdhub.FileSplit([0], files=["a.png"], root=Path("/x")), "FileSplit.root: expected a str"),
        (
            lambda: kdhub.FileDataset(kdhub.FileSplit([0], files=["a"]), (X, Y), 1, (0.5,) * 3, (0.2,) * 3),
            "FileDataset.test: expected a kdhub.FileSplit(labels, files=..., root=...)",
        ),
        (
            lambda: kdhub.FileDataset(
                kdhub.FileSplit([0], files=["a"]), kdhub.FileSplit([0], files=["b"]), 1, (0.5,) * 3, (0.2,) * 3, "cifar"
            ),
            "FileDataset.transforms: expected a kdhub.ImageTransforms(",
        ),
    ],
)
def test_a_wrong_field_fails_at_construction_in_one_line(build, message):
    with pytest.raises(ContractError) as raised:
        build()
    text = str(raised.value)
    assert text.startswith(message), text
    assert "\n" not in text
    assert isinstance(raised.value, (TypeError, ValueError))  # what a caller catching the old errors expects


def test_a_good_bundle_is_normalised_to_tuples():
    made = bundle(mean=[0.5], std=torch.tensor([0.25]))
    assert made.mean == (0.5,)
    assert made.std == (0.25,)
    assert made.class_names == ["0", "1"]


class TupleData(kdhub.Dataset):
    """A dataset plugin that returns its splits as tuples (a common first attempt)."""

    name = "tuple_data"

    def load(self) -> kdhub.DataBundle:
        return kdhub.DataBundle(train=(X, Y), test=(X, Y), num_classes=2, mean=(0.5,), std=(0.25,))  # type: ignore[arg-type]


class RegisterTupleData:
    @kdhub.hookimpl
    def kdhub_register_datasets(self, register):
        register(TupleData)


def test_a_plugin_that_breaks_the_contract_is_named_at_dry_run(tiny_config, tmp_path, capsys, register_plugin):
    register_plugin(RegisterTupleData(), "tuple-data")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**tiny_config, "data": {"name": "tuple_data", "batch_size": 2}}))
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "DataBundle.train: expected a kdhub.TensorSplit(images, labels), got a tuple of 2 items" in err
    assert f"(dataset plugin 'tuple_data', {__name__}.TupleData)" in err
