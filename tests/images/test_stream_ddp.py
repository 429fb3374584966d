"""torchrun with 2 processes on an image folder: disjoint shards, and TLLM decides as one process does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdhub.engine.runner import run
from kdhub.tracking import load_table

SCRIPT = Path(__file__).with_name("_ddp_record.py")


def launch(config: dict, out: Path, processes: int) -> dict:
    out.mkdir()
    path = out / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    if processes == 1:
        command = [sys.executable, str(SCRIPT), str(path), str(out)]
    else:
        run_module = [sys.executable, "-m", "torch.distributed.run"]  # torchrun of this interpreter
        command = [*run_module, "--nproc_per_node", str(processes), str(SCRIPT), str(path), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "run.json").read_text())


@pytest.mark.slow
def test_two_processes_see_disjoint_shards_and_make_the_same_tllm_decisions(digit_folder, tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    options = {"root": str(digit_folder), "augment": "resize", "image_size": 16, "channels": 1}
    base = {
        "seed": 0,
        "data": {"name": "image_folder", "options": options, "batch_size": 64, "workers": 0},
        "optim": {"lr": 0.1},
        "schedule": {"name": "constant"},
        "metrics": [],
        "train": {"progress": False},
        "tracking": {"uri": uri, "experiment": "ddp"},
    }
    teacher = run({**base, "epochs": 3, "student": {"name": "cnn", "options": {"width": 8}}})
    config = {
        **base,
        "epochs": 5,
        "data": {**base["data"], "val_fraction": 0.2, "workers": 1},
        # no BatchNorm in the student: two half-batches give the same update as one batch
        "student": {"name": "mlp", "options": {"hidden": [32], "batch_norm": False}},
        "teacher": {"name": "cnn", "options": {"width": 8}, "weights": f"runs:/{teacher.run_id}/checkpoints/final.pt"},
        "methods": [{"name": "kd", "weight": 1.0, "options": {"temperature": 4}}],
        "policy": {
            "name": "tllm",
            "options": {
                "start": 1,
                "window": 1,
                "eta": 0.0,
                "criterion": "paper",
                "patience": 1,
                "end": None,
                "max_stopped_fraction": 1.0,
            },
        },
        "optim": {"lr": 0.05},
    }
    one = launch(config, tmp_path / "one", 1)
    two = launch(config, tmp_path / "two", 2)

    single = json.loads((tmp_path / "one" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 5 * 18  # 1,120 training images, batch 64
    for (epoch, step, batch), a, b in zip(single, ranks[0], ranks[1], strict=True):
        assert a[:2] == b[:2] == [epoch, step]
        assert not set(a[2]) & set(b[2])  # disjoint shards
        assert sorted(a[2] + b[2]) == sorted(batch)  # together: the one-process batch
    epochs = {}
    for epoch, _, batch in single:
        epochs.setdefault(epoch, []).extend(batch)
    assert all(sorted(v) == list(range(1120)) for v in epochs.values())  # every image once per epoch
    assert epochs[1] != epochs[2]  # a new shuffle each epoch

    stopped = [load_table(r["run_id"], "tllm_stopped", uri) for r in (one, two)]
    assert set(stopped[0]) == set(stopped[1])
    for column, values in stopped[0].items():  # the same decisions; the losses differ in summation order
        if all(isinstance(v, (int, str)) for v in values):
            assert stopped[1][column] == values, column
        else:
            assert stopped[1][column] == pytest.approx(values, rel=1e-4, abs=1e-5), column
    assert stopped[0]["class"]
    assert len(set(stopped[0]["stopped_epoch"])) > 1  # real decisions: classes stopped at different epochs
    curves = [load_table(r["run_id"], "tllm_curves", uri) for r in (one, two)]
    for c in range(10):
        assert curves[1][str(c)] == pytest.approx(curves[0][str(c)], rel=1e-3)
