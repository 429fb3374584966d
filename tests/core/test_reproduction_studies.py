"""The reproduction study in TLLM's regime expands as docs/reproductions.md describes it: at least 10 seeds of
each compared run, one teacher trained once for every seed, TLLM with the trend and the paper's criterion."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from kdhub.study import expand, load_study

STUDY = Path(__file__).parents[2] / "examples" / "reproductions" / "fashion_cnn_tllm.yaml"


def test_fashion_cnn_tllm_has_ten_seeds_of_each_run_and_one_shared_teacher():
    runs = expand(load_study(STUDY))
    seeds = Counter(r.name for r in runs)
    assert seeds["teacher"] == 1
    for name in ("vanilla", "kd", "tllm", "tllm_paper"):
        assert seeds[name] >= 10, name
    assert seeds["tllm_eta"] >= 5  # the second eta, for the choice on the holdout split
    students = [r for r in runs if r.name != "teacher"]
    assert all(r.deps == {"teacher": "teacher-s0"} for r in students)
    paper = next(r for r in runs if r.name == "tllm_paper").config["policy"]["options"]
    assert paper["criterion"] == "paper"
    assert paper["patience"] == 1
    assert paper["end"] is None
    trend = next(r for r in runs if r.name == "tllm").config["policy"]
    assert trend.get("options", {}).get("criterion", "trend") == "trend"
