"""Issue 21: `kdhub --help`, `kdhub list` and `kdhub show` answer from the catalog cache without importing torch,
mlflow or pydantic, print the same bytes as from the loaded plugins, and never answer stale."""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import kdhub
from kdhub.commands import browse
from kdhub.commands import cli as commands_cli
from kdhub.commands.builtin import ListCommand, ShowCommand
from kdhub.registry import cache
from kdhub.registry import loading as plugins
from kdhub.registry.reference import plugin_catalog

ROOT = Path(__file__).resolve().parents[2]


# the lazy public API ----------------------------------------------------------------------------------


def test_every_public_name_resolves_and_is_declared_for_type_checkers():
    for name in kdhub.__all__:
        assert getattr(kdhub, name) is not None, name
    assert set(kdhub.__all__) <= set(dir(kdhub))
    from kdhub import Method, Options, hookimpl  # `from kdhub import` keeps working

    assert issubclass(Method, kdhub.Plugin)
    assert Options is kdhub.Options
    assert callable(hookimpl)
    with pytest.raises(AttributeError, match="no attribute 'Methodd'"):
        _ = kdhub.Methodd  # type: ignore[attr-defined]
    # the TYPE_CHECKING imports (what mypy and IDEs see) are the names __getattr__ imports, from the same modules
    tree = ast.parse((ROOT / "kdhub" / "__init__.py").read_text(encoding="utf-8"))
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    declared = {
        alias.name: node.module for node in guarded.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert declared == kdhub._HOME
    functions = {"run", "list_plugins", "get_plugin", "create", "__version__"}
    assert set(kdhub.__all__) == (set(declared) - {"get_registry"}) | functions


# the same bytes from the cache -------------------------------------------------------------------------


def _round_trip() -> dict:
    catalog = plugin_catalog(plugins.get_registry())
    catalog["commands"] = [commands_cli._help(e) for e in commands_cli._commands()]
    return json.loads(json.dumps(catalog, ensure_ascii=False))


def test_list_show_and_help_from_the_catalog_are_the_same_bytes(capsys):
    catalog = _round_trip()
    registry = plugins.get_registry()
    assert list(catalog["kinds"]) == list(kdhub.registry.KINDS)
    for kind in catalog["kinds"]:
        for pattern in ("*", "*kd*", "c*"):
            args = argparse.Namespace(kind=kind, pattern=pattern)
            ListCommand().run(args)
            loaded = capsys.readouterr().out
            browse.list_plugins(catalog, args)
            assert capsys.readouterr().out == loaded, (kind, pattern)
        for name in registry.names(kind):
            args = argparse.Namespace(kind=kind, name=name)
            ShowCommand().run(args)
            loaded = capsys.readouterr().out
            browse.show_plugin(catalog, args)
            assert capsys.readouterr().out == loaded, (kind, name)
    assert commands_cli._catalog_parser(catalog).format_help() == commands_cli.build_parser().format_help()
    for command in ("list", "show"):
        helps = []
        for parser in (commands_cli._catalog_parser(catalog), commands_cli.build_parser()):
            with pytest.raises(SystemExit):
                parser.parse_args([command, "--help"])
            helps.append(capsys.readouterr().out)
        assert helps[0] == helps[1]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["show", "method", "kdd"], "unknown method 'kdd'; did you mean 'kd'"),
        (["list", "methods"], "unknown plugin kind 'methods'; did you mean 'method'"),
        (["show", "metrics", "cka"], "unknown plugin kind 'metrics'; did you mean 'metric'"),
        (["show", "model", "nosuch:x"], "unknown model 'nosuch:x'"),
    ],
)
def test_unknown_names_from_the_catalog_are_the_same_one_line_error(argv, expected):
    catalog = _round_trip()
    errors = []
    for parser in (commands_cli._catalog_parser(catalog), commands_cli.build_parser()):
        args = parser.parse_args(argv)
        with pytest.raises(kdhub.PluginNotFoundError) as err:
            args.func(args)
        errors.append(str(err.value))
    assert errors[0] == errors[1]
    assert errors[0].startswith(expected)


# through main(): a miss writes the catalog, a hit loads no plugin -------------------------------------------


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty cache folder and no registry loaded in this process (it is loaded again afterwards)."""
    monkeypatch.setenv("KDHUB_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("KDHUB_STRICT_PLUGINS", "KDHUB_TRACE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    # as a new `kdhub` process: module files written by earlier tests are older than its start
    monkeypatch.setattr(cache, "_SINCE_NS", time.time_ns())
    plugins.reset()
    yield tmp_path / "cache"
    plugins.reset()


def test_a_miss_writes_the_catalog_and_a_hit_loads_nothing(fresh, capsys):
    assert commands_cli.main(["list", "method"]) == 0
    loaded = capsys.readouterr().out
    assert len(list(fresh.glob("catalog-*.json"))) == 1
    plugins.reset()
    assert commands_cli.main(["list", "method"]) == 0
    assert capsys.readouterr().out == loaded
    assert plugins._state is None  # answered from the catalog: no plugin loaded
    assert commands_cli.main(["show", "method", "kdd"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdhub: error: unknown method 'kdd'; did you mean 'kd'")
    assert len(err.splitlines()) == 1
    assert plugins._state is None


def test_plugins_registered_by_hand_bypass_the_cache(fresh, capsys, register_plugin):
    class Handmade(kdhub.Method):
        """Registered by hand, never cached."""

        name = "handmade_uncached"

        def loss(self, out):
            return out.student_logits.sum(1) * 0

    class Plugin:
        @kdhub.hookimpl
        def kdhub_register_methods(self, register):
            register(Handmade)

    assert commands_cli.main(["list", "method"]) == 0  # writes the catalog
    capsys.readouterr()
    register_plugin(Plugin(), "handmade")
    assert commands_cli.main(["list", "method", "handmade*"]) == 0
    assert "handmade_uncached" in capsys.readouterr().out
    assert commands_cli.main(["show", "method", "handmade_uncached"]) == 0
    assert "Registered by hand" in capsys.readouterr().out
    catalogs = [json.loads(p.read_text()) for p in fresh.glob("catalog-*.json")]
    assert catalogs
    assert all("handmade_uncached" not in c["catalog"]["kinds"]["method"] for c in catalogs)


def test_a_cache_file_edited_by_hand_is_ignored(fresh, capsys):
    assert commands_cli.main(["list", "policy"]) == 0
    loaded = capsys.readouterr().out
    (path,) = fresh.glob("catalog-*.json")
    data = json.loads(path.read_text())
    del data["catalog"]["commands"]
    path.write_text(json.dumps(data))
    plugins.reset()
    assert commands_cli.main(["list", "policy"]) == 0
    assert capsys.readouterr().out == loaded
    assert plugins._state is not None  # not answered from the malformed file
    path.write_text("{not json")
    plugins.reset()
    assert commands_cli.main(["list", "policy"]) == 0
    assert capsys.readouterr().out == loaded


def test_an_unwritable_cache_folder_is_no_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("KDHUB_CACHE_DIR", str(tmp_path / "file" / "cache"))  # under a file: cannot be made
    plugins.reset()
    try:
        assert commands_cli.main(["list", "dataset"]) == 0
        assert "digits" in capsys.readouterr().out
    finally:
        plugins.reset()


# the key: anything that could change the catalog changes it --------------------------------------------------

HELLO = """
import kdhub
from hello_pkg.policy import Hello

@kdhub.hookimpl
def kdhub_register_policies(register):
    register(Hello)
"""
HELLO_POLICY = """
import kdhub

class Hello(kdhub.Policy):
    '''A policy from a third party.'''
    name = "hello_cached"
    def plan(self, epoch, step):
        return kdhub.StepPlan()
"""


def _distribution(root: Path, dist: str, version: str, entry_points: str) -> None:
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[kdhub]\n{entry_points}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A third-party plugin package installed in a folder of its own on sys.path."""
    package = tmp_path / "hello_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(HELLO))
    (package / "policy.py").write_text(textwrap.dedent(HELLO_POLICY))
    _distribution(tmp_path, "kdhub-hello", "0.1", "hello = hello_pkg")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("KDHUB_LOAD_PLUGINS", raising=False)
    importlib.invalidate_caches()
    return tmp_path


def _key() -> str | None:
    importlib.invalidate_caches()  # the finders' folder listings, as a new process would see them
    return cache.catalog_key()


def test_the_key_changes_with_everything_the_catalog_is_made_from(site, monkeypatch):
    keys = [_key()]
    policy = site / "hello_pkg" / "policy.py"
    stat = policy.stat()
    os.utime(policy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # an edited module
    keys.append(_key())
    (site / "hello_pkg" / "more.py").write_text("")  # a new module (plugin_classes would find it)
    keys.append(_key())
    (site / "kdhub_hello-0.1.dist-info").rename(site / "kdhub_hello-0.2.dist-info")
    info = site / "kdhub_hello-0.2.dist-info" / "METADATA"
    info.write_text(info.read_text().replace("Version: 0.1", "Version: 0.2"))  # a new version
    keys.append(_key())
    _distribution(site, "kdhub-other", "1.0", "other = hello_pkg.policy")  # a new entry point
    keys.append(_key())
    (site / "unrelated-3.0.dist-info").mkdir()  # any installed distribution (a plugin may import it)
    keys.append(_key())
    monkeypatch.setenv("KDHUB_LOAD_PLUGINS", "kdhub-hello")
    keys.append(_key())
    monkeypatch.setattr(cache, "__version__", "99.0")  # kdhub's own version
    keys.append(_key())
    assert None not in keys
    assert len(set(keys)) == len(keys)
    assert _key() == keys[-1]  # and nothing else does


def test_an_entry_point_that_cannot_be_found_without_importing_is_not_cached(site):
    _distribution(site, "kdhub-ghost", "1.0", "ghost = no_such_module_anywhere")
    assert _key() is None


def _new_process(monkeypatch) -> None:
    """What a new `kdhub` process sees: no plugin loaded or imported, every file older than its start."""
    for name in [m for m in sys.modules if m.partition(".")[0] in ("hello_pkg", "hello_helper")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    plugins.reset()
    monkeypatch.setattr(cache, "_SINCE_NS", time.time_ns())


def test_an_edited_plugin_or_helper_module_is_never_shown_stale(site, fresh, capsys, monkeypatch):
    (site / "hello_helper.py").write_text("DOC = 'A policy from a third party.'\n")  # outside the package
    policy = site / "hello_pkg" / "policy.py"
    policy.write_text(policy.read_text().replace("import kdhub\n", "import kdhub\nimport hello_helper\n"))
    (site / "hello_pkg" / "__init__.py").write_text("")  # installed, registers nothing yet
    _new_process(monkeypatch)
    assert commands_cli.main(["list", "policy"]) == 0
    assert "hello_cached" not in capsys.readouterr().out
    _new_process(monkeypatch)
    assert commands_cli.main(["list", "policy"]) == 0  # from the catalog
    assert plugins._state is None
    assert "hello_cached" not in capsys.readouterr().out
    (site / "hello_pkg" / "__init__.py").write_text(textwrap.dedent(HELLO))  # the plugin edited
    _new_process(monkeypatch)
    assert commands_cli.main(["list", "policy"]) == 0
    assert capsys.readouterr().out.count("hello_cached") == 1
    assert plugins._state is not None  # a miss: loaded (and saved)
    _new_process(monkeypatch)
    assert commands_cli.main(["show", "policy", "hello_cached"]) == 0
    assert plugins._state is None
    assert "A policy from a third party." in capsys.readouterr().out
    (site / "hello_helper.py").write_text("DOC = 'changed'\n")  # a module it imports, in no entry point's package
    _new_process(monkeypatch)
    assert commands_cli.main(["list", "policy"]) == 0
    assert plugins._state is not None
    capsys.readouterr()


def test_a_module_edited_after_the_process_imported_it_is_not_cached(site, fresh, capsys, monkeypatch):
    _new_process(monkeypatch)
    import hello_pkg  # the former version, imported by this process

    assert hello_pkg.kdhub_register_policies
    init = site / "hello_pkg" / "__init__.py"
    init.write_text(init.read_text() + "\n# edited\n")
    plugins.reset()
    assert commands_cli.main(["list", "policy"]) == 0
    capsys.readouterr()
    assert not list(fresh.glob("catalog-*.json"))  # it might describe the former version
    _new_process(monkeypatch)


def test_a_load_failure_is_never_cached(site, fresh, capsys, monkeypatch):
    (site / "hello_pkg" / "__init__.py").write_text("raise ImportError('broken on purpose')\n")
    _new_process(monkeypatch)
    assert commands_cli.main(["list", "policy"]) == 0
    assert not list(fresh.glob("catalog-*.json"))
    _new_process(monkeypatch)


# a real `kdhub` process ----------------------------------------------------------------------------------

PROBE = """
import contextlib, io, json, sys
from kdhub.commands.cli import main
outputs = []
for argv in (["--help"], ["list", "method"], ["show", "method", "kd"], ["show", "method", "kdd"], ["--version"]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    outputs.append([code, out.getvalue(), err.getvalue()])
print(json.dumps({"outputs": outputs, "loaded": [m for m in ("torch", "mlflow", "pydantic") if m in sys.modules]}))
"""


def test_with_a_warm_cache_kdhub_imports_no_torch_mlflow_or_pydantic(tmp_path):
    env = {**os.environ, "KDHUB_CACHE_DIR": str(tmp_path)}
    for name in ("KDHUB_STRICT_PLUGINS", "KDHUB_TRACE_PLUGINS", "KDHUB_LOAD_PLUGINS"):
        env.pop(name, None)
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(2)
    ]
    cold, warm = runs
    assert "torch" in cold["loaded"]  # the first one loaded the plugins and wrote the catalog
    assert warm["loaded"] == []
    assert warm["outputs"] == cold["outputs"]
    assert [code for code, _, _ in warm["outputs"]] == [0, 0, 0, 2, 0]
    assert "kd " in warm["outputs"][1][1]
    assert warm["outputs"][4][1] == f"kdhub {kdhub.__version__}\n"
