"""Entry-point loading: broken plugins are recorded and skipped, strict mode, selection, duplicates."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
import yaml

import kdhub
from kdhub.registry import loading as plugins


def make_distribution(root: Path, dist: str, module: str, code: str) -> None:
    """A minimal installed distribution: a module and a .dist-info with a kdhub entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(code))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[kdhub]\n{module} = {module}\n")


BROKEN = "raise ImportError('this plugin is broken on purpose')\n"
DUPLICATE_KD = """
import kdhub
class FakeKD(kdhub.Method):
    '''Claims the built-in name.'''
    name = "kd"
    def loss(self, out):
        return out.student_logits.sum(1) * 0
@kdhub.hookimpl
def kdhub_register_methods(register):
    register(FakeKD)
"""
GOOD = """
import kdhub
class Hello(kdhub.Policy):
    '''A policy from a third party.'''
    name = "hello"
    def plan(self, epoch, step):
        return kdhub.StepPlan()
@kdhub.hookimpl
def kdhub_register_policies(register):
    register(Hello)
"""


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    make_distribution(tmp_path, "kdhub-broken", "kdhub_broken_mod", BROKEN)
    make_distribution(tmp_path, "kdhub-dupe", "kdhub_dupe_mod", DUPLICATE_KD)
    make_distribution(tmp_path, "kdhub-hello", "kdhub_hello_mod", GOOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset()
    yield tmp_path
    plugins.reset()


def test_a_broken_plugin_is_recorded_and_skipped(fake_site, monkeypatch):
    monkeypatch.delenv("KDHUB_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("KDHUB_LOAD_PLUGINS", raising=False)
    assert "hello" in kdhub.list_plugins("policy")
    assert "kd" in kdhub.list_plugins("method")
    failures = {f.distribution: f.error for f in plugins.load_failures()}
    assert "broken on purpose" in failures["kdhub-broken"]
    assert "registered twice" in failures["kdhub-dupe"]
    assert "kdhub 0.1.0" in failures["kdhub-dupe"]
    assert kdhub.get_plugin("method", "kd").__module__ == "kdhub_methods.kd"


def test_strict_mode_makes_a_failure_fatal(fake_site, monkeypatch):
    monkeypatch.setenv("KDHUB_STRICT_PLUGINS", "1")
    monkeypatch.delenv("KDHUB_LOAD_PLUGINS", raising=False)
    with pytest.raises(kdhub.PluginLoadError, match="kdhub-broken"):
        kdhub.list_plugins("method")


def test_load_plugins_selects_distributions(fake_site, monkeypatch):
    monkeypatch.setenv("KDHUB_LOAD_PLUGINS", "")
    assert "hello" not in kdhub.list_plugins("policy")
    assert "kd" in kdhub.list_plugins("method")
    assert plugins.load_failures() == []
    plugins.reset()
    monkeypatch.setenv("KDHUB_LOAD_PLUGINS", "kdhub-hello")
    assert "hello" in kdhub.list_plugins("policy")
    assert plugins.load_failures() == []


def test_cli_reports_a_broken_plugin_and_keeps_working(fake_site):
    env = {"PYTHONPATH": str(fake_site), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "kdhub.cli", "plugins", "--json"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1  # a plugin failed to load
    payload = json.loads(proc.stdout)
    errors = {e["distribution"]: e["error"] for e in payload["errors"]}
    assert "broken on purpose" in errors["kdhub-broken"]
    hello = next(p for p in payload["plugins"] if p["distribution"] == "kdhub-hello")
    assert hello["registers"] == {"policy": ["hello"]}
    strict = subprocess.run(
        [sys.executable, "-m", "kdhub.cli", "list", "method"],
        capture_output=True,
        text=True,
        env={**env, "KDHUB_STRICT_PLUGINS": "1"},
    )
    assert strict.returncode == 2
    assert "kdhub-broken" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_plugin_modules_register_nothing_on_import():
    import importlib

    module = importlib.import_module("kdhub_methods.kd")
    assert not hasattr(module, "kdhub_register_methods")


# Issue 14: plugin loading exactly as documented -----------------------------------------------------

MIXED = """
import kdhub
from pydantic import Field

class Method(kdhub.Method):
    def loss(self, out):
        return out.student_logits.sum(1) * 0

class First(Method):
    '''Registered before the failures.'''
    name = "mixed_first"

class ClaimsKD(Method):
    '''Claims a built-in name: refused.'''
    name = "kd"

class BadDefault(Method):
    '''Its default breaks its own bound: refused.'''
    name = "mixed_bad_default"
    class Options(kdhub.Options):
        size: int = Field(5, ge=0, le=3, description="default above its bound")

class EmptyRange(Method):
    '''No value satisfies its bounds: refused.'''
    name = "mixed_empty_range"
    class Options(kdhub.Options):
        size: int = Field(1, ge=5, le=1, description="empty range")

class Last(Method):
    '''Registered after the failures.'''
    name = "mixed_last"

@kdhub.hookimpl
def kdhub_register_methods(register):
    register(First)
    register(ClaimsKD)
    register(Last())  # an instance
    register(BadDefault)
    register(EmptyRange)
    register(Last)
"""
LIFECYCLE_ONLY = """
import kdhub

@kdhub.hookimpl
def kdhub_run_started(run):
    pass

@kdhub.hookimpl
def kdhub_epoch_ended(run, epoch, metrics):
    pass
"""


@pytest.fixture
def mixed_site(tmp_path, monkeypatch):
    make_distribution(tmp_path, "kdhub-mixed", "kdhub_mixed_mod", MIXED)
    make_distribution(tmp_path, "kdhub-watch", "kdhub_watch_mod", LIFECYCLE_ONLY)
    make_distribution(tmp_path, "kdhub-broken", "kdhub_broken_mod", BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("KDHUB_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("KDHUB_LOAD_PLUGINS", raising=False)
    plugins.reset()
    yield tmp_path
    plugins.reset()


def test_a_refused_registration_keeps_the_plugins_other_registrations(mixed_site):
    methods = kdhub.list_plugins("method")
    assert "mixed_first" in methods
    assert "mixed_last" in methods  # registered after four refused calls
    assert "mixed_bad_default" not in methods
    assert "mixed_empty_range" not in methods
    assert kdhub.get_plugin("method", "kd").__module__ == "kdhub_methods.kd"
    errors = [f.error for f in plugins.load_failures() if f.distribution == "kdhub-mixed"]
    assert len(errors) == 4
    assert any("registered twice" in e for e in errors)
    assert any("registered an instance of Last" in e and "register the class: register(Last)" in e for e in errors)
    assert any("the default 5 of option 'size' breaks its own bounds" in e for e in errors)
    assert any("option 'size' has an empty range (bounds 5 and 1)" in e for e in errors)
    info = next(i for i in plugins.loaded_plugins() if i.distribution == "kdhub-mixed")
    assert info.registered == {"method": ["mixed_first", "mixed_last"]}


def test_kdhub_plugins_exits_1_on_a_failure_and_lists_lifecycle_plugins(mixed_site, capsys):
    from kdhub.commands.cli import main

    assert main(["plugins"]) == 1
    out = capsys.readouterr().out
    assert "kdhub-watch 0.1  [kdhub_watch_mod = kdhub_watch_mod]\n  hooks: run_started, epoch_ended" in out
    assert "FAILED kdhub-broken" in out
    assert main(["plugins", "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    watch = next(p for p in payload["plugins"] if p["distribution"] == "kdhub-watch")
    assert watch["hooks"] == ["kdhub_run_started", "kdhub_epoch_ended"]
    assert watch["registers"] == {}


def test_kdhub_run_warns_and_unknown_names_mention_the_failure(mixed_site, capsys, tmp_path):
    from kdhub.commands.cli import main

    config = tmp_path / "run.yaml"
    config.write_text("student: cnn\nteacher: cnn\nmethods: [broken_method]\n")
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    warnings = [ln for ln in lines if ln.startswith("kdhub: warning:")]
    assert any("plugin 'kdhub_broken_mod' from kdhub-broken failed to load" in w for w in warnings)
    assert all(len(w) < 400 for w in warnings)
    error = next(ln for ln in lines if ln.startswith("kdhub: error:"))
    assert "methods.0.name: unknown method 'broken_method'" in error
    assert "plugin 'kdhub_broken_mod' from kdhub-broken failed to load" in error


def test_trace_plugins_prints_the_traceback(mixed_site):
    env = {"PYTHONPATH": str(mixed_site), "PATH": "/usr/bin:/bin", "KDHUB_TRACE_PLUGINS": "1"}
    proc = subprocess.run([sys.executable, "-m", "kdhub.cli", "plugins"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ImportError: this plugin is broken on purpose" in proc.stderr


def test_show_prints_capabilities_as_values(capsys):
    from kdhub.commands.cli import main

    assert main(["show", "metric", "cka"]) == 0
    out = capsys.readouterr().out
    assert "feature_roles=('stages',)" in out
    assert "<function" not in out
    assert main(["show", "method", "at"]) == 0
    assert "feature_roles=('stages',)" in capsys.readouterr().out


class _Boom:
    @kdhub.hookimpl
    def kdhub_epoch_ended(self, run, epoch, metrics):
        raise ValueError("the hook broke\nsecond line")


def test_a_raising_lifecycle_hook_fails_the_run_naming_the_plugin(capsys, tmp_path, mlflow_uri):
    from kdhub.commands.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "student": {"name": "cnn", "options": {"width": 4}},
                "epochs": 2,
                "metrics": ["accuracy"],
                "train": {"progress": False},
                "tracking": {"uri": mlflow_uri, "experiment": "hooks", "run_name": "boom"},
            }
        )
    )
    plugins.register_module(_Boom(), name="boom", distribution="kdhub-boom")
    try:
        assert main(["run", str(config)]) == 2
    finally:
        plugins.unregister("boom", distribution="kdhub-boom")
    err = capsys.readouterr().err
    assert err.strip() == (
        "kdhub: error: plugin 'boom' from kdhub-boom: kdhub_epoch_ended raised ValueError: the hook broke"
    )
    client = mlflow.MlflowClient(mlflow_uri)
    failed = client.search_runs([client.get_experiment_by_name("hooks").experiment_id], "attributes.run_name = 'boom'")
    assert failed[0].info.status == "FAILED"
    assert "plugin 'boom' from kdhub-boom" in failed[0].data.tags["kdhub.failure"]


class _BarePlan(kdhub.Policy):
    """Returns StepPlan() every step: the run's ce_weight must stay."""

    name = "bare_plan_test"

    def plan(self, epoch: int, step: int) -> kdhub.StepPlan:
        return kdhub.StepPlan()


class _BarePlanPlugin:
    @kdhub.hookimpl
    def kdhub_register_policies(self, register):
        register(_BarePlan)


def test_a_bare_step_plan_keeps_the_runs_ce_weight():
    from kdhub.engine.runner import run

    assert kdhub.StepPlan().ce_weight is None
    plugins.register_module(_BarePlanPlugin(), name="bare")
    config = {
        "student": {"name": "cnn", "options": {"width": 4}},
        "epochs": 1,
        "ce_weight": 0.25,
        "policy": "bare_plan_test",
        "metrics": ["accuracy"],
        "train": {"progress": False},
    }
    result = run(config, track=False)
    assert result.history[0]["policy/ce_weight"] == 0.25
    plain = run({**config, "policy": "constant"}, track=False)
    assert result.history[0]["loss/ce"] == pytest.approx(plain.history[0]["loss/ce"])  # same weighted CE


def test_piping_into_head_prints_no_broken_pipe_traceback():
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdhub.cli", "list", "method"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # the reader is gone before anything is written, as `| head -0`
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert "Traceback" not in err, err
    assert "BrokenPipeError" not in err, err


COMMANDS = """
import kdhub
class Greet(kdhub.Command):
    '''Say hello.'''
    name = "greet"
    def add_arguments(self, parser):
        parser.add_argument("who")
    def run(self, args):
        print(f"hello {args.who}")
        return 0
class FakeRun(kdhub.Command):
    '''Claims the built-in command name.'''
    name = "run"
    def add_arguments(self, parser):
        pass
    def run(self, args):
        return 0
@kdhub.hookimpl
def kdhub_register_commands(register):
    register(Greet)
    register(FakeRun)
"""


@pytest.fixture
def command_site(tmp_path, monkeypatch):
    make_distribution(tmp_path, "kdhub-greet", "kdhub_greet_mod", COMMANDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("KDHUB_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("KDHUB_LOAD_PLUGINS", raising=False)
    plugins.reset()
    yield tmp_path
    plugins.reset()


def test_kdhubs_own_commands_come_through_the_commands_hook(command_site, capsys):
    """kdhub's commands are registered as a plugin's are: the same hook, the same registry, the same refusals."""
    from kdhub.commands.builtin import BUILTIN_COMMANDS, RunCommand
    from kdhub.commands.cli import build_parser, main

    assert kdhub.get_plugin("command", "run") is RunCommand  # the third party's "run" was refused
    own = next(i for i in plugins.loaded_plugins() if i.module == "kdhub.commands.builtin")
    assert (own.distribution, own.name) == ("kdhub", "commands")
    assert own.registered == {"command": [cls.name for cls in BUILTIN_COMMANDS]}
    refused = [f.error for f in plugins.load_failures() if f.distribution == "kdhub-greet"]
    assert len(refused) == 1
    assert "FakeRun refused" in refused[0]
    assert "registered twice" in refused[0]
    choices = list(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert choices[: len(BUILTIN_COMMANDS)] == [cls.name for cls in BUILTIN_COMMANDS]
    assert {"compare", "greet"} <= set(choices[len(BUILTIN_COMMANDS) :])
    assert main(["greet", "you"]) == 0
    assert capsys.readouterr().out == "hello you\n"


def test_without_its_own_commands_kdhub_says_to_reinstall(monkeypatch, capsys):
    """A checkout whose entry points predate the commands hook (kdhub not reinstalled) fails with one line."""
    from kdhub.commands.cli import main

    plugins.reset()
    try:
        registry = plugins.get_registry()
        monkeypatch.setattr(registry, "entries", lambda kind, *a, **k: [])
        assert main(["list", "method"]) == 2
    finally:
        plugins.reset()
    err = capsys.readouterr().err
    assert err.startswith("kdhub: error: kdhub's own commands are not registered")
    assert "reinstall kdhub" in err
