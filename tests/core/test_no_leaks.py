"""Runs and studies leave no temporary folder behind (checkpoints and downloads live in a per-run folder)."""

from __future__ import annotations

import tempfile

import pytest

from kdhub.study import StudyConfig, run_study

BASE = {
    "epochs": 1,
    "data": {"name": "digits", "batch_size": 128},
    "metrics": ["accuracy", "per_class_accuracy"],
    "train": {"progress": False},
}


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Point every tempfile call (kdhub's and mlflow's) at an empty folder of this test's own."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_study_leaves_no_temporary_folder(private_tmp, mlflow_uri):
    study = StudyConfig.model_validate(
        {
            "name": "leaks",
            "base": BASE,
            "runs": [
                {"name": "teacher", "set": {"student": {"name": "cnn", "options": {"width": 8}}}},
                {
                    "name": "kd",
                    "set": {
                        "student": {"name": "cnn", "options": {"width": 4}},
                        "teacher": {
                            "name": "cnn",
                            "options": {"width": 8},
                            "weights": "runs:/${teacher}/checkpoints/final.pt",
                        },
                        "methods": ["kd"],
                    },
                },
            ],
            "compare": {"baseline": "teacher", "runs": ["kd"]},
        }
    )
    assert list(private_tmp.iterdir()) == []
    result = run_study(study, mlflow_uri)
    assert len(result["summary"]["run"]) == 2
    left = sorted(p.name for p in private_tmp.iterdir() if p.name != "torchinductor_root")  # torch's compile cache
    assert left == []
