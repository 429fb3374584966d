"""Safe loading: no file a user points kdhub at can run code; broken files are one clear line.

The hostile files here would create a marker file when unpickled; every test asserts the marker
was NOT created.
"""

from __future__ import annotations

import builtins
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import kdhub
from kdhub.commands.cli import main
from kdhub.contract.errors import IncompatibleError, KdhubError
from kdhub.engine import checkpoint
from kdhub.engine.checkpoint import CheckpointError, load, load_weights, read_weights
from kdhub.tracking import resolve_artifact

REPO = Path(__file__).parents[2]


class Payload:
    """Unpickling this creates ``marker`` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def hostile_files(folder: Path, marker: Path) -> dict[str, Path]:
    legacy = folder / "legacy.pt"
    with open(legacy, "wb") as handle:
        pickle.dump({"model": {"fc.weight": Payload(marker)}}, handle, protocol=2)
    zipped = folder / "zipped.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2)}, "extra": Payload(marker)}, zipped)
    return {"legacy pickle": legacy, "torch.save zip": zipped}


def cnn(width: int = 4, in_channels: int = 1) -> torch.nn.Module:
    return kdhub.create("model", "cnn", width=width).build(10, in_channels, 8)


@pytest.mark.parametrize("kind", ["legacy pickle", "torch.save zip"])
def test_a_hostile_weights_file_is_refused_without_running_it(tmp_path, kind):
    marker = tmp_path / "PWNED"
    path = hostile_files(tmp_path, marker)[kind]
    with pytest.raises(CheckpointError, match=r"refused: it holds pickled objects \(io\.open\)") as raised:
        load_weights(cnn(), path, "teacher.weights")
    assert "save a state_dict" in str(raised.value)
    assert not marker.exists()


def test_a_hostile_teacher_through_the_cli_is_one_line(capsys, tmp_path, mlflow_uri):
    marker = tmp_path / "PWNED"
    weights = hostile_files(tmp_path, marker)["torch.save zip"]
    config = {
        "student": {"name": "cnn", "options": {"width": 4}},
        "teacher": {"name": "cnn", "options": {"width": 4}, "weights": str(weights)},
        "methods": ["kd"],
        "epochs": 1,
        "train": {"progress": False},
        "tracking": {"uri": mlflow_uri, "experiment": "tests"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kdhub: error: teacher.weights ({weights}): refused")
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.write_bytes(b""), "the file is empty"),
        (lambda p: p.write_text("just some text\n"), "not a PyTorch checkpoint, or truncated or corrupt"),
        (lambda p: p.write_bytes(bytes(range(256)) * 8), "not a PyTorch checkpoint, or truncated or corrupt"),
        (lambda p: p.write_text(yaml.safe_dump({"student": "cnn", "epochs": 3})), "not a PyTorch checkpoint"),
        (lambda p: torch.save({"w": torch.zeros(2)}, p) or p.write_bytes(p.read_bytes()[:100]), "truncated"),
        (lambda p: torch.save([torch.zeros(2)], p), "holds a list, not a checkpoint or a state_dict"),
        (lambda p: torch.save({"model": {"a": "text"}}, p), "holds no state_dict"),
        (lambda p: p.mkdir(), "is a folder"),
    ],
)
def test_broken_weights_files_are_one_clear_line(tmp_path, make, expected):
    path = tmp_path / "weights.pt"
    make(path)
    with pytest.raises(KdhubError) as raised:
        load_weights(cnn(), path, "teacher.weights")
    message = str(raised.value)
    assert expected in message
    assert message.startswith("teacher.weights: ")
    assert "\n" not in message


def test_dev_null_and_a_directory_are_refused_as_references(tmp_path):
    with pytest.raises(KdhubError, match="not a regular file"):
        resolve_artifact("/dev/null", None, tmp_path / "dl", "teacher.weights")
    with pytest.raises(KdhubError, match="is a folder"):
        resolve_artifact(str(tmp_path), None, tmp_path / "dl", "teacher.weights")
    with pytest.raises(KdhubError, match=r"teacher\.weights: .*: no such file"):
        resolve_artifact(str(tmp_path / "nope.pt"), None, tmp_path / "dl", "teacher.weights")
    with pytest.raises(KdhubError, match=r"\(5005 characters\): no such file|File name too long"):
        resolve_artifact("x" * 5000 + ".pt", None, tmp_path / "dl", "teacher.weights")


def test_weights_of_another_architecture_say_what_does_not_fit(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(cnn(width=8).state_dict(), path)
    with pytest.raises(IncompatibleError) as raised:
        load_weights(cnn(width=4), path, "teacher.weights")
    message = str(raised.value)
    assert "shape mismatch" in message
    assert "saved from another model" in message
    assert "\n" not in message


def test_state_dicts_kdhub_checkpoints_and_safetensors_load(tmp_path):
    from safetensors.torch import save_file

    source = cnn()
    for name, save in [
        ("state_dict.pt", lambda p: torch.save(source.state_dict(), p)),
        ("checkpoint.pt", lambda p: torch.save({"model": source.state_dict(), "epoch": 3}, p)),
        ("ddp.pt", lambda p: torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, p)),
        ("weights.safetensors", lambda p: save_file(source.state_dict(), str(p))),
        ("no_suffix", lambda p: save_file(source.state_dict(), str(p))),  # found by its header
    ]:
        path = tmp_path / name
        save(path)
        target = cnn()
        load_weights(target, path, name)
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), (name, key)


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's legacy state
    checkpoint.save({"rng": checkpoint.rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.randn(3))
    checkpoint.set_rng_state(load(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(3), random.random(), np.random.randn(3))
    assert torch.equal(expected[0], got[0])
    assert expected[1] == got[1]
    assert np.array_equal(expected[2], got[2])


def test_a_checkpoint_with_the_old_numpy_rng_state_still_loads(tmp_path):
    np.random.seed(5)
    old = {"rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}}
    torch.save(old, tmp_path / "old.pt")
    expected = np.random.rand(2)
    checkpoint.set_rng_state(load(tmp_path / "old.pt")["rng"])
    assert np.array_equal(np.random.rand(2), expected)


def test_no_unsafe_load_anywhere_in_the_repository():
    sources = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "build" not in p.parts]
    assert len(sources) > 100
    unsafe = "weights_only=" + "False"  # spelled apart so that this file does not match itself
    offenders = [str(p) for p in sources if unsafe in p.read_text(encoding="utf-8")]
    assert offenders == []
    loads = [
        (p, m.group(0))
        for p in sources
        if p.parts[-3:-1] != ("tests", "core")
        for m in re.finditer(r"torch\.load\([^)]*\)", p.read_text(encoding="utf-8"))
    ]
    assert loads, "expected kdhub's own torch.load"
    assert all("weights_only=True" in call for _, call in loads), loads


# references to MLflow runs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    [
        "runs:/abc/../../etc/passwd",
        "runs:/abc/checkpoints/../../../x.pt",
        "runs:/abc//etc/passwd",
        "runs:/abc/",
        "runs:/../x/final.pt",
        "runs:/abc\\..\\x",
    ],
)
def test_a_runs_reference_stays_inside_the_run(reference, mlflow_uri, tmp_path):
    with pytest.raises(KdhubError, match=r"inside the run's artifacts|expected runs:/<run_id>/<artifact path>"):
        resolve_artifact(reference, mlflow_uri, tmp_path / "dl", "teacher.weights")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, finished_and_killed_runs):
    """A FINISHED run and a KILLED run (with a last.pt) in a store of their own."""
    return finished_and_killed_runs(tmp_path_factory.mktemp("runs"), "safe-loading")


def _last_pt(runs) -> Path:
    artifacts = runs["client"].get_run(runs["killed"]).info.artifact_uri.removeprefix("file://")
    return Path(artifacts) / "checkpoints" / "last.pt"


@pytest.mark.parametrize("damage", ["truncated", "hostile", "empty"])
def test_resume_refuses_a_damaged_or_hostile_last_pt(capsys, tmp_path, two_runs, damage):
    last = _last_pt(two_runs)
    good = tmp_path / "good.pt"
    shutil.copy(last, good)
    marker = tmp_path / "PWNED"
    try:
        if damage == "truncated":
            last.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        elif damage == "hostile":
            shutil.copy(hostile_files(tmp_path, marker)["torch.save zip"], last)
        else:
            last.write_bytes(b"")
        code = main(["run", "--resume", two_runs["killed"], "--tracking-uri", two_runs["uri"]])
        err = capsys.readouterr().err
    finally:
        shutil.copy(good, last)
    assert code == 2
    assert err.startswith(f"kdhub: error: --resume {two_runs['killed']}: checkpoints/last.pt: ")
    assert len(err.strip().splitlines()) == 1
    assert {"truncated": "truncated or corrupt", "hostile": "refused", "empty": "the file is empty"}[damage] in err
    assert not marker.exists()
    assert two_runs["client"].get_run(two_runs["killed"]).info.status == "KILLED"  # not touched


def test_a_hostile_artifact_of_another_run_is_refused(tmp_path, two_runs):
    marker = tmp_path / "PWNED"
    artifacts = Path(two_runs["client"].get_run(two_runs["finished"]).info.artifact_uri.removeprefix("file://"))
    (artifacts / "poisoned").mkdir(exist_ok=True)
    shutil.copy(hostile_files(tmp_path, marker)["legacy pickle"], artifacts / "poisoned" / "final.pt")
    path = resolve_artifact(
        f"runs:/{two_runs['finished']}/poisoned/final.pt", two_runs["uri"], tmp_path / "dl", "teacher.weights"
    )
    with pytest.raises(CheckpointError, match="refused"):
        read_weights(path, "teacher.weights")
    assert not marker.exists()


def test_a_reference_to_a_deleted_run_names_it(two_runs, tmp_path):
    client, uri = two_runs["client"], two_runs["uri"]
    doomed = client.create_run(client.get_experiment_by_name("safe-loading").experiment_id).info.run_id
    client.delete_run(doomed)
    with pytest.raises(KdhubError, match=f"teacher.weights: runs:/{doomed}/checkpoints/final.pt: run '{doomed}' was"):
        resolve_artifact(f"runs:/{doomed}/checkpoints/final.pt", uri, tmp_path / "dl", "teacher.weights")
    with pytest.raises(KdhubError, match=f"run '{doomed}' was deleted"):
        kdhub.tracking.check_resumable(doomed, uri)
    with pytest.raises(KdhubError, match=re.escape("has no artifact 'checkpoints/nope.pt'")):
        kdhub.tracking.check_reference(f"runs:/{two_runs['finished']}/checkpoints/nope.pt", uri, "teacher.weights")
    kdhub.tracking.check_reference(f"runs:/{two_runs['finished']}/checkpoints/final.pt", uri, "teacher.weights")
