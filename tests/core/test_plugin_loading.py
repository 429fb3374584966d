"""Entry-point loading: broken plugins are recorded and skipped, strict mode, selection, duplicates."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kdhub
from kdhub import plugins


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
