"""benchmarks/gpu_suite.py: its --quick mode on CPU (every code path), its refusal without a GPU, its failures."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import kdhub

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SUITE = BENCHMARKS / "gpu_suite.py"
ENV = {**os.environ, "KDHUB_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def gpu_suite():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("gpu_suite")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_quick_mode_runs_every_section_on_cpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(a) batch 16 fp32: kdhub" in proc.stdout  # progress is printed
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["quick"] is True
    assert report["failures"] == []
    assert report["environment"]["device"] == "cpu"
    assert report["environment"]["threads"] == 1
    assert report["budget"]["total_s"] == 45
    results = report["results"]

    cases = results["throughput"]["cases"]
    assert [(c["batch"], c["setting"]) for c in cases] == [
        (b, s) for b in (16, 32) for s in ("fp32", "bf16", "bf16+channels_last", "bf16+compile")
    ]
    for case in cases:
        assert case["kdhub_images_per_s"] > 0
        assert case["hand_written_images_per_s"] > 0
        assert case["ratio"] == pytest.approx(case["kdhub_images_per_s"] / case["hand_written_images_per_s"], rel=1e-3)
        assert len(case["pair_ratios"]) == report["budget"]["repeats"]
        assert case["peak_mb"] is None  # no GPU memory on CPU
    compiled = [c for c in cases if c["setting"] == "bf16+compile"]
    assert all(c["compiled"] == {"student": True, "teacher": True} for c in compiled)

    pipeline = results["pipeline"]
    kd, rd = pipeline["kdhub"], pipeline["repdistiller_style"]
    best = max((c for c in cases if c["batch"] == 16), key=lambda c: c["kdhub_images_per_s"])
    assert kd["setting"] == best["setting"]
    expected = 240 * (50_000 / best["kdhub_images_per_s"] + kd["test_eval_s"]) + kd["one_off_s"]
    assert kd["projected_minutes"] == pytest.approx(expected / 60, rel=0.01)
    assert rd["steps_measured"] == 8
    assert rd["workers"] == 1
    assert pipeline["speedup"] == pytest.approx(rd["projected_minutes"] / kd["projected_minutes"], rel=0.01)

    runs = results["plugins"]["runs"]
    assert [r["plugin"] for r in runs] == [
        "method ab",
        "method crd",
        "method fitnet",
        "method kd",
        "method rkd",
        "policy tllm",
    ]
    for run in runs:
        assert "error" not in run, run
        assert run["losses"]
        assert all(math.isfinite(v) for v in run["losses"].values())
    assert any(k.startswith("init/ab") for k in runs[0]["losses"])  # AB's initialisation stage ran

    overhead = results["overhead"]
    assert set(overhead["seconds"]) == {"kd", "kd+tllm+light_metrics"}
    assert overhead["ratio"] > 0

    streaming = results["streaming"]
    if "image_folder" in kdhub.list_plugins("dataset"):
        assert streaming["ratio"] > 0
    else:
        assert "image_folder" in streaming["skipped"]

    md = (tmp_path / "gpu_suite.md").read_text()
    assert md.startswith("# kdhub GPU suite — CPU smoke test (--quick")
    assert "NOT a GPU measurement" in md
    for heading in ("## (a) Throughput", "## (b) The 240-epoch", "## (c) Every method", "## (d) TLLM", "## (f)"):
        assert heading in md
    assert f"| 32 | bf16+compile | {cases[-1]['kdhub_images_per_s']:,.0f} |" in md
    assert "| policy tllm | ok |" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_suite_refuses_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--out", str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "gpu_suite: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU, "
        "or pass --quick for the CPU smoke test"
    )
    assert not (tmp_path / "gpu_suite.json").exists()


class _NotFinite(kdhub.Method):
    """A method whose loss is NaN (what a diverging method logs)."""

    name = "not_finite_for_test"
    output_based = True
    per_sample: ClassVar[bool] = False

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        return out.student_logits.sum() * float("nan")


class _Crashing(kdhub.Method):
    name = "crashing_for_test"
    output_based = True

    def loss(self, out: kdhub.StepOutputs) -> torch.Tensor:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


class _Register:
    @kdhub.hookimpl
    def kdhub_register_methods(self, register: Any) -> None:
        register(_NotFinite)
        register(_Crashing)


@pytest.fixture
def broken_methods(register_plugin):
    register_plugin(_Register(), "gpu-suite-test")


def test_a_non_finite_loss_or_a_crash_fails_the_suite_naming_the_plugin(gpu_suite, broken_methods, tmp_path):
    suite = gpu_suite.Suite(gpu_suite.QUICK, quick=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nan, crash, fine = (
            suite.plugin_run(f"method {name}", suite.plugin_config(name, "constant", {}, 1))
            for name in ("not_finite_for_test", "crashing_for_test", "kd")
        )
    # the engine itself stops a diverging run, naming the term and the step
    assert nan["error"].startswith("DivergedError: training diverged: loss term 'not_finite_for_test'")
    assert "epoch 1, step 1 of" in nan["error"]
    assert crash["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "error" not in fine
    assert suite.failures == [
        "(c) method not_finite_for_test: " + nan["error"],
        "(c) method crashing_for_test: " + crash["error"],
    ]
    suite.results = {"plugins": {"runs": [nan, crash, fine], "steps": 4}}
    md = gpu_suite.markdown(
        {
            "quick": True,
            "environment": gpu_suite.environment(torch.device("cpu")),
            "elapsed_s": 1.0,
            "results": suite.results,
            "notes": [],
            "failures": suite.failures,
        }
    )
    assert "| method crashing_for_test | FAILED: RuntimeError: CUDA error" in md
    assert "- FAILED: (c) method not_finite_for_test: DivergedError: training diverged" in md


def test_gpu_decode_option_is_found_by_name(gpu_suite):
    from typing import Literal

    from pydantic import Field

    class Folder(kdhub.Dataset):
        name = "folder_for_test"

        class Options(kdhub.Options):
            root: str = Field("data", description="root")
            decode: Literal["cpu", "gpu"] = Field("cpu", description="where JPEGs are decoded")

    class Flag(Folder):
        class Options(kdhub.Options):
            gpu_decode: bool = Field(False, description="decode on the GPU")

    cuda = torch.device("cuda")
    assert gpu_suite.gpu_decode_option(Folder, cuda) == {"decode": "gpu"}
    assert gpu_suite.gpu_decode_option(Flag, cuda) == {"gpu_decode": True}
    assert gpu_suite.gpu_decode_option(Folder, torch.device("cpu")) == {}


def test_sections_past_the_budget_are_skipped_with_a_note(gpu_suite, tmp_path):
    from dataclasses import replace

    suite = gpu_suite.Suite(replace(gpu_suite.QUICK, total_s=0), quick=True, enforce_budget=True)
    assert suite.run(tmp_path) == 0
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    sections = ("throughput", "pipeline", "plugins", "overhead", "streaming")
    assert all(report["results"][s] == {"skipped": "budget spent"} for s in sections)
    assert report["notes"] == [f"{tag}: skipped (budget spent)" for tag in ("(a)", "(b)", "(c)", "(d)", "(f)")]
    assert "- (c): skipped (budget spent)" in (tmp_path / "gpu_suite.md").read_text()
