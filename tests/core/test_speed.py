"""Speed settings: thread count, torch.compile with feature hooks (and its fallback), the teacher's forward."""

from __future__ import annotations

import logging
import math

import mlflow
import pytest
import torch
import torch.nn.functional as F

import kdhub
from kdhub.contract.config import TrainConfig
from kdhub.contract.config_loading import parse_config
from kdhub.contract.errors import ConfigError
from kdhub.engine import speed
from kdhub.engine.features import FeatureTaps
from kdhub.engine.loop import Trainer
from kdhub.engine.runner import run


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# threads ---------------------------------------------------------------------------------------


def test_threads_precedence():
    cores = speed.available_cores()
    assert speed.resolve_threads(None, {}) == speed.ThreadChoice(cores, "auto")
    assert speed.resolve_threads(3, {}) == speed.ThreadChoice(3, "train.threads")
    assert speed.resolve_threads(None, {"OMP_NUM_THREADS": "5"}) == speed.ThreadChoice(5, "OMP_NUM_THREADS")
    assert speed.resolve_threads(3, {"OMP_NUM_THREADS": "5"}).source == "train.threads"
    assert speed.resolve_threads(3, {"KDHUB_THREADS": "7", "OMP_NUM_THREADS": "5"}) == speed.ThreadChoice(
        7, "KDHUB_THREADS"
    )
    assert speed.resolve_threads(None, {"KDHUB_THREADS": " "}).source == "auto"  # empty: not set


def test_threads_are_shared_by_the_processes_of_a_machine(monkeypatch):
    monkeypatch.setattr(speed, "available_cores", lambda: 16)
    assert speed.resolve_threads(None, {"LOCAL_WORLD_SIZE": "4"}) == speed.ThreadChoice(4, "auto")
    assert speed.resolve_threads(None, {"LOCAL_WORLD_SIZE": "32"}) == speed.ThreadChoice(1, "auto")
    # torchrun sets OMP_NUM_THREADS=1 by itself when it starts several processes: not a choice
    assert speed.resolve_threads(None, {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}).count == 8
    assert speed.resolve_threads(None, {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "3"}).count == 3
    assert speed.resolve_threads(None, {"OMP_NUM_THREADS": "1"}).count == 1  # one process: a choice


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KDHUB_THREADS": "0"}, "KDHUB_THREADS: expected an integer >= 1, got '0'"),
        ({"KDHUB_THREADS": "four"}, "KDHUB_THREADS: expected an integer >= 1, got 'four'"),
        ({"OMP_NUM_THREADS": "-2"}, "OMP_NUM_THREADS: expected an integer >= 1, got '-2'"),
    ],
)
def test_bad_thread_settings_are_one_line_errors(env, message):
    with pytest.raises(ConfigError) as err:
        speed.resolve_threads(None, env)
    assert str(err.value) == message


def test_threads_config_is_validated():
    with pytest.raises(ConfigError, match=r"train\.threads"):
        parse_config({"student": "cnn", "train": {"threads": 0}})


def test_a_run_sets_and_logs_its_thread_count(tiny_config, monkeypatch, restore_threads):
    monkeypatch.delenv("KDHUB_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(1)
    config = {**tiny_config, "epochs": 1, "train": {**tiny_config["train"], "threads": 2}}
    config["data"] = {**config["data"], "train_fraction": 0.05, "batch_size": 32}  # two threads crawl when busy
    result = run(config)
    assert torch.get_num_threads() == 2
    params = mlflow.MlflowClient(tiny_config["tracking"]["uri"]).get_run(result.run_id).data.params
    assert params["threads"] == "2"
    assert params["train.threads"] == "2"
    monkeypatch.setenv("KDHUB_THREADS", "1")  # the environment overrides the config
    with Trainer(parse_config(config)) as trainer:
        assert trainer.threads == 1 == torch.get_num_threads()


# torch.compile ---------------------------------------------------------------------------------


def _net_and_taps(roles=("stages", "pooled", "preact_stages")):
    torch.manual_seed(0)
    plugin = kdhub.create("model", "cnn", width=4, depth=2)
    net = plugin.build(5, 3, 8)
    return net, FeatureTaps(net, plugin.taps(net), roles)


def test_compile_disabled_is_the_model_itself():
    net, _ = _net_and_taps()
    assert speed.compile_model(net, False, "student") is net


def test_compiled_model_with_feature_hooks_matches_eager():
    """Dynamo traces the taps' forward hooks (aot_eager: the graph capture without code generation)."""
    net, taps = _net_and_taps()
    x = torch.randn(6, 3, 8, 8)
    eager_logits = net(x)
    eager = taps.collect()
    compiled = speed.compile_model(net, True, "student (cnn)", backend="aot_eager")
    assert isinstance(compiled, speed.CompiledModel)
    logits = compiled(x)
    feats = taps.collect()
    assert compiled.compiled
    assert compiled.fallback_reason is None
    torch.testing.assert_close(logits, eager_logits)
    assert feats.keys() == eager.keys()
    for role in feats:
        for a, b in zip(feats[role], eager[role], strict=True):
            torch.testing.assert_close(a, b)
    (logits.square().mean() + feats["stages"][0].mean()).backward()
    assert all(p.grad is not None for p in net.parameters())


SLOW_ZOO = ["resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_2", "vgg8", "mobilenetv2", "shufflev1", "shufflev2"]


@pytest.mark.parametrize("name", ["cnn", "resnet8", *(pytest.param(n, marks=pytest.mark.slow) for n in SLOW_ZOO)])
def test_zoo_models_compile_with_every_tap(name):
    torch.manual_seed(0)
    plugin = kdhub.create("model", name)
    net = plugin.build(10, 3, 32)
    all_taps = plugin.taps(net)
    taps = FeatureTaps(net, all_taps, all_taps.keys())
    x = torch.randn(4, 3, 32, 32)
    eager_logits, eager = net(x), taps.collect()
    compiled = speed.compile_model(net, True, name, backend="aot_eager")
    logits, feats = compiled(x), taps.collect()
    assert compiled.compiled
    torch.testing.assert_close(logits, eager_logits)
    for role in all_taps:
        for a, b in zip(feats[role], eager[role], strict=True):
            torch.testing.assert_close(a, b)
    logits.sum().backward()


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(caplog):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found\nsecond line of detail")

    net, taps = _net_and_taps()
    x = torch.randn(4, 3, 8, 8)
    expected = net(x)
    taps.collect()
    compiled = speed.compile_model(net, True, "teacher (cnn)", backend=broken_backend)
    with caplog.at_level(logging.WARNING, logger="kdhub"):
        out = compiled(x)
        compiled(x)
    torch.testing.assert_close(out, expected)
    assert taps.collect()["stages"][0] is not None  # the eager call fed the taps
    assert not compiled.compiled
    warnings = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("torch.compile failed for the teacher (cnn), running it eagerly: ")
    assert warnings[0].endswith("BackendCompilerFailed (RuntimeError: no C++ compiler found)")
    assert "\n" not in warnings[0]


def test_an_error_of_the_model_itself_still_surfaces(caplog):
    net, _ = _net_and_taps()
    compiled = speed.compile_model(net, True, "student (cnn)", backend="aot_eager")
    with caplog.at_level(logging.WARNING, logger="kdhub"), pytest.raises(RuntimeError, match="channels"):
        compiled(torch.randn(2, 7, 8, 8))  # wrong channel count: eager raises it too


def _compile_config(**train):
    return {
        "seed": 0,
        "epochs": 1,
        "data": {
            "name": "synthetic",
            "options": {"num_classes": 5, "image_size": 8, "train_size": 48, "test_size": 16},
            "batch_size": 16,
        },
        "student": {"name": "cnn", "options": {"width": 4, "depth": 2}},
        "teacher": {"name": "cnn", "options": {"width": 8, "depth": 2}},
        "ce_weight": 0.5,
        "methods": [{"name": "kd"}, {"name": "fitnet"}],  # logits and a feature tap on both models
        "metrics": ["accuracy"],
        "schedule": {"name": "constant"},
        "train": {"device": "cpu", "progress": False, **train},
    }


def _fit(cfg) -> Trainer:
    with Trainer(parse_config(cfg)) as trainer:
        trainer.fit()
    return trainer


def test_engine_compiles_student_and_teacher_with_feature_taps():
    eager = _fit(_compile_config())
    compiled = _fit(_compile_config(compile=True, compile_backend="aot_eager"))
    assert compiled.train_model.compiled
    assert compiled.teacher_forward.model.compiled
    for key in ("loss/kd", "loss/fitnet", "loss/ce", "train/acc"):
        assert compiled.history[0][key] == pytest.approx(eager.history[0][key], rel=1e-4, abs=1e-5), key
    # the teacher alone
    teacher_only = _fit(_compile_config(teacher_compile=True, compile_backend="aot_eager"))
    assert not isinstance(teacher_only.train_model, speed.CompiledModel)
    assert teacher_only.teacher_forward.model.compiled


def test_engine_falls_back_when_compile_cannot_start(monkeypatch, caplog):
    def unavailable(*args, **kwargs):
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    with caplog.at_level(logging.WARNING, logger="kdhub"):
        trainer = _fit(_compile_config(compile=True))
    messages = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert messages == [
        "torch.compile failed for the student (cnn), running it eagerly: "
        "RuntimeError: torch.compile is not supported on this Python",
        "torch.compile failed for the teacher (cnn), running it eagerly: "
        "RuntimeError: torch.compile is not supported on this Python",
    ]
    assert math.isfinite(trainer.history[0]["loss/total"])


@pytest.mark.slow
def test_engine_with_inductor_compiles_a_tiny_cnn():
    """The real compiler (C++ code generation on CPU) for student and teacher, feature taps included."""
    eager = _fit(_compile_config())
    compiled = _fit(_compile_config(compile=True))
    assert compiled.train_model.compiled
    assert compiled.teacher_forward.model.compiled
    for key in ("loss/kd", "loss/fitnet", "loss/ce"):
        assert compiled.history[0][key] == pytest.approx(eager.history[0][key], rel=1e-3), key


# the teacher's forward -------------------------------------------------------------------------


def _teacher(train: TrainConfig, roles=("stages",)):
    net, taps = _net_and_taps(roles)
    net.eval().requires_grad_(False)
    return net, speed.TeacherForward(net, taps, train, torch.device("cpu"), "cnn")


def test_teacher_precision_is_independent_of_the_student():
    x = torch.randn(4, 3, 8, 8)
    net, forward = _teacher(TrainConfig(amp="none", teacher_amp="bf16"))
    logits, feats = forward(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = net(x).float()
    assert logits.dtype == torch.float32
    assert torch.equal(logits, expected)
    assert feats["stages"][0].dtype == torch.bfloat16
    assert not torch.equal(logits, net(x))  # really not float32
    # and the other way round: a float32 teacher under a bf16 student
    net, forward = _teacher(TrainConfig(amp="bf16", teacher_amp="none"))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the student's autocast around the call
        logits, feats = forward(x)
    assert torch.equal(logits, net(x))
    assert feats["stages"][0].dtype == torch.float32
    # default: as the student
    assert speed.TeacherForward(net, None, TrainConfig(amp="bf16"), torch.device("cpu"), "cnn").amp == "bf16"


def test_teacher_in_inference_mode_gives_tensors_losses_can_save():
    net, forward = _teacher(TrainConfig(teacher_grad_mode="inference_mode"), roles=("stages", "pooled"))
    seen = []
    net.register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    x = torch.randn(4, 3, 8, 8)
    logits, feats = forward(x)
    assert seen == [True]
    assert not logits.is_inference()
    assert not any(t.is_inference() for ts in feats.values() for t in ts)
    student = torch.nn.Linear(feats["pooled"][0].shape[1], 5)
    loss = F.mse_loss(student(feats["pooled"][0]), logits)  # saves the teacher's tensors for backward
    loss.backward()
    assert student.weight.grad is not None


def test_engine_runs_the_teacher_in_inference_mode_and_bf16():
    reference = _fit(_compile_config())
    trainer = _fit(_compile_config(teacher_grad_mode="inference_mode"))
    for key in ("loss/kd", "loss/fitnet", "loss/ce"):  # the same numbers: only bookkeeping differs
        assert trainer.history[0][key] == pytest.approx(reference.history[0][key], rel=1e-6), key
    mixed = _fit(_compile_config(teacher_amp="bf16", teacher_grad_mode="inference_mode"))
    assert mixed.teacher_forward.amp == "bf16"
    assert all(math.isfinite(v) for v in mixed.history[0].values())
    assert mixed.history[0]["loss/kd"] != reference.history[0]["loss/kd"]


# process exit -----------------------------------------------------------------------------------------


def test_the_kdhub_program_exits_without_collecting_what_it_loaded(tiny_config, tmp_path):
    """The final garbage collections of torch's and MLflow's objects (a second of CPU) are skipped."""
    import json
    import subprocess
    import sys

    tiny_config["epochs"] = 1
    script = (
        "import json, os, sys\n"
        "import yaml\n"
        "from kdhub.cli import main\n"
        "open('run.yaml', 'w').write(yaml.safe_dump(json.loads(sys.argv[1])))\n"
        "assert main(['run', 'run.yaml']) == 0\n"
        "class Cycle:\n"
        "    def __del__(self):\n"
        "        os.write(1, b'collected at exit')\n"
        "cycle = Cycle()\n"
        "cycle.me = cycle\n"
        "del cycle\n"
        "print('trained', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(tiny_config)], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "trained"  # the cycle was left to the operating system
