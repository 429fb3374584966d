"""Every refusal of an unsafe pickle is kdhub's one line naming what the file holds, never PyTorch's advice.

PyTorch's weights-only error ends with "Re-running `torch.load` with `weights_only` set to `False`
will likely succeed": advice to execute the very file kdhub refused. ``kdhub export``, ``kdhub
evaluate``, teacher weights and ImageNet's ``meta.bin`` must each say it their own way.
"""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path

import pytest
import torch

import kdhub
from kdhub.cli import main
from kdhub.engine.checkpoint import CheckpointError, load_weights

PYTORCH_ADVICE = "weights_only` set to `False`"


class Payload:
    """Unpickling this creates ``marker`` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


class Plain:
    """An object of a class of the user's own (no code runs; still not tensors)."""


def hostile(folder: Path, marker: Path) -> dict[str, Path]:
    files = {}
    files["code"] = folder / "code.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "model_spec": Payload(marker)}, files["code"])
    files["object"] = folder / "object.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "model_spec": Plain()}, files["object"])
    files["legacy"] = folder / "legacy.pt"
    with open(files["legacy"], "wb") as handle:
        pickle.dump({"model": {"w": Payload(marker)}}, handle, protocol=2)
    return files


@pytest.mark.parametrize("kind", ["code", "object", "legacy"])
@pytest.mark.parametrize(
    "command",
    [
        ["export", "{path}", "--format", "safetensors", "--out", "{out}"],
        ["evaluate", "{path}", "--data", "digits"],
    ],
)
def test_export_and_evaluate_refuse_a_pickle_in_one_line_of_their_own(kind, command, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    path = hostile(tmp_path, marker)[kind]
    args = [a.format(path=path, out=tmp_path / "out.safetensors") for a in command]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert PYTORCH_ADVICE not in out + err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith(f"kdhub: error: {path}: not a loadable kdhub checkpoint (")
    assert "kdhub reads tensors and plain values only" in err
    if kind != "legacy":
        assert "refused: it holds pickled objects (" in err
    assert not marker.exists()


def test_teacher_weights_with_objects_name_them(tmp_path):
    marker = tmp_path / "PWNED"
    for path in hostile(tmp_path, marker).values():
        net = kdhub.create("model", "cnn", width=4).build(10, 1, 8)
        with pytest.raises(CheckpointError) as raised:
            load_weights(net, path, "teacher.weights")
        assert PYTORCH_ADVICE not in str(raised.value)
        assert "save a state_dict" in str(raised.value)
    assert not marker.exists()


def test_an_imagenet_meta_bin_with_objects_is_refused_in_kdhub_words(tmp_path):
    from kdhub_zoo.datasets.imagenet import synset_names

    marker = tmp_path / "PWNED"
    torch.save(({"n01440764": Payload(marker)}, []), tmp_path / "meta.bin")
    with pytest.raises(kdhub.KdhubError) as raised:
        synset_names(tmp_path, ["n01440764"])
    text = str(raised.value)
    assert text.startswith(f"imagenet: cannot read {tmp_path / 'meta.bin'} (refused: it holds pickled objects (")
    assert PYTORCH_ADVICE not in text
    assert "\n" not in text
    assert not marker.exists()


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({}, "names no model plugin ('name')"),
        ({"name": "cnn"}, "has no valid 'num_classes' (an int >= 1, got None)"),
        ({"name": "cnn", "num_classes": 10, "image_size": "8"}, "has no valid 'image_size' (an int >= 1, got '8')"),
        ({"name": "cnn", "num_classes": 10, "options": [1]}, "has options that are not a dict"),
        (["cnn"], "is a list, not a dict"),
    ],
)
def test_a_checkpoint_with_an_incomplete_model_spec_is_one_line(spec, problem, tmp_path, capsys):
    path = tmp_path / "partial.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "model_spec": spec}, path)
    assert main(["evaluate", str(path), "--data", "digits"]) == 2
    assert capsys.readouterr().err == f"kdhub: error: {path}: not a kdhub checkpoint (its model_spec {problem})\n"


def test_a_timm_pretrained_file_with_objects_is_refused_in_kdhub_words(tmp_path):
    pytest.importorskip("timm")
    marker = tmp_path / "PWNED"
    path = hostile(tmp_path, marker)["code"]
    model = kdhub.create("model", "timm:resnet18", pretrained_file=str(path))
    with pytest.raises(kdhub.ConfigError) as raised:
        model.build(10, 3, 32)
    text = str(raised.value)
    assert text.startswith(f"options.pretrained_file: {path}: refused: it holds pickled objects (io.open)")
    assert "weights_only" not in text
    assert not marker.exists()
