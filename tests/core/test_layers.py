"""The house rules of CONTRIBUTING.md about imports, read from the source (every ``import``, those inside
functions and under ``TYPE_CHECKING`` included):

- the layers of ``kdhub/`` import only downward, and no ``kdhub`` modules import each other in a cycle;
- the project (kdhub, plugins, template, tests, benchmarks) uses the new module paths, never the former
  ones that :mod:`kdhub._moved` still answers;
- only ``kdhub/tracking/`` imports mlflow, only ``kdhub/registry/loading.py`` makes pluggy's manager,
  and the core names no plugin;
- no module of ``kdhub/`` or ``plugins/`` is longer than 600 lines.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from kdhub._moved import MOVED

ROOT = Path(__file__).resolve().parents[2]
KDHUB = ROOT / "kdhub"

LAYERS = ("contract", "registry", "tracking", "engine", "study", "commands")
"""The layer packages of ``kdhub/``, bottom first: each may import only itself and those before it."""
API = "the public API"
"""``kdhub/__init__.py``, ``kdhub/cli.py``, ``kdhub/testing.py``, ``kdhub/_moved.py``: above every layer."""

PLUGIN_PACKAGES = ("kdhub_methods", "kdhub_policies", "kdhub_metrics", "kdhub_zoo", "kdhub_analysis")
MAX_LINES = 600


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module (the longest known prefix), dotted
    name: str  # as written
    where: str  # path:line


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kdhub_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(KDHUB.rglob("*.py"))}


def imported_names(path: Path) -> list[tuple[str, int]]:
    """Every module name an ``import`` in the file names (``from a import b``: ``a.b`` and ``a``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def kdhub_imports(modules: dict[str, Path]) -> list[Import]:
    out = []
    for source, path in modules.items():
        for name, line in imported_names(path):
            if name != "kdhub" and not name.startswith("kdhub."):
                continue
            target = name  # `from kdhub.registry import loading` imports kdhub.registry.loading
            while target not in modules and target not in MOVED and "." in target:
                target = target.rpartition(".")[0]
            if target != source:
                out.append(Import(source, target, name, f"{path.relative_to(ROOT)}:{line}"))
    return out


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else API


def rank(layer: str) -> int:
    return LAYERS.index(layer) if layer in LAYERS else len(LAYERS)


def upward_imports(imports: list[Import]) -> list[str]:
    return [
        f"{i.where}: {i.source} ({layer_of(i.source)}) imports {i.target} ({layer_of(i.target)}), a layer above it"
        for i in imports
        if i.target not in MOVED and rank(layer_of(i.target)) > rank(layer_of(i.source))
    ]


def cycles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        graph.setdefault(i.source, set()).add(i.target)
        graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return kdhub_imports(kdhub_modules())


def test_every_module_is_in_a_layer():
    """A module at the top of kdhub/ is the public API; anything else belongs in a layer package."""
    top = {p.name for p in KDHUB.glob("*.py")}
    assert top == {"__init__.py", "_moved.py", "cli.py", "testing.py"}, sorted(top)
    packages = {p.name for p in KDHUB.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(LAYERS), sorted(packages)


def test_layers_import_only_downward(imports):
    upward = upward_imports(imports)
    assert not upward, "a layer imports only from the layers below it (CONTRIBUTING.md):\n" + "\n".join(upward)


def test_no_import_cycle(imports):
    found = cycles(imports)
    assert not found, "kdhub modules that import each other in a cycle:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_former_module_path_in_the_project(imports):
    """kdhub, the built-in plugins, the template, tests and benchmarks import from the new paths."""
    old = [f"{i.where}: {i.name} is now {' / '.join(MOVED[i.target])}" for i in imports if i.target in MOVED]
    for path in python_files("plugins", "examples", "tests", "benchmarks", "scripts"):
        for name, line in imported_names(path):
            former = next((m for m in MOVED if name == m or name.startswith(f"{m}.")), None)
            if former is not None:
                old.append(f"{path.relative_to(ROOT)}:{line}: {name} is now {' / '.join(MOVED[former])}")
    assert not old, "import from the new module paths:\n" + "\n".join(old)


def test_the_checks_see_upward_imports_and_cycles():
    """The checks themselves: an upward import and a cycle are found (so the tests above can fail)."""
    bad = [
        Import("kdhub.contract.config", "kdhub.tracking.store", "kdhub.tracking.store", "config.py:1"),
        Import("kdhub.tracking.store", "kdhub.contract.config", "kdhub.contract.config", "store.py:1"),
    ]
    assert upward_imports(bad) == [
        "config.py:1: kdhub.contract.config (contract) imports kdhub.tracking.store (tracking), a layer above it"
    ]
    assert cycles(bad) == [["kdhub.contract.config", "kdhub.tracking.store"]]
    function_level = imported_names(Path(__file__))  # this file's import inside a function below
    assert ("kdhub.registry.loading.get_registry", _function_level_import.__code__.co_firstlineno + 2) in (
        function_level
    )


def _function_level_import() -> object:
    """Not called: an import inside a function, for the test above."""
    from kdhub.registry.loading import get_registry

    return get_registry


def python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


def test_mlflow_only_in_tracking():
    outside = [
        f"{p.relative_to(ROOT)}:{line}"
        for p in python_files("kdhub")
        if "tracking" not in p.relative_to(KDHUB).parts
        for name, line in imported_names(p)
        if name == "mlflow" or name.startswith("mlflow.")
    ]
    assert not outside, "only kdhub/tracking/ imports mlflow: " + ", ".join(outside)


def test_the_core_names_no_plugin():
    named = [
        f"{p.relative_to(ROOT)}:{line} {name}"
        for p in python_files("kdhub")
        for name, line in imported_names(p)
        if name.split(".")[0] in PLUGIN_PACKAGES
    ]
    assert not named, "the core (kdhub/) never imports a plugin: " + ", ".join(named)


def test_only_the_loader_makes_the_plugin_manager():
    makers = [
        str(p.relative_to(ROOT)) for p in python_files("kdhub") if "PluginManager(" in p.read_text(encoding="utf-8")
    ]
    assert makers == ["kdhub/registry/loading.py"], makers


def test_no_module_over_600_lines():
    long = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in python_files("kdhub", "plugins")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    ]
    assert not long, f"split by job (CONTRIBUTING.md), at most {MAX_LINES} lines a module:\n" + "\n".join(long)


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("kdhub.config", "RunConfig", "kdhub.contract.config"),
        ("kdhub.config", "load_config", "kdhub.contract.config_loading"),
        ("kdhub.config", "resolve_plugins", "kdhub.registry.resolve"),
        ("kdhub.plugins", "get_registry", "kdhub.registry.loading"),
        ("kdhub.export", "network_from_checkpoint", "kdhub.registry.student"),
        ("kdhub.hookspecs", "REGISTER_HOOKS", "kdhub.contract.hookspecs"),
        ("kdhub.method", "Method", "kdhub"),
    ],
)
def test_former_module_paths_still_import_with_a_warning(old, name, new):
    """Third-party code that imports from a former path keeps working, and is told where the name is now."""
    import importlib

    with pytest.warns(DeprecationWarning, match=rf"{old} moved: import {name} from {new}$"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(MOVED[old][0] if new == "kdhub" else new), name)
    with pytest.raises(ImportError, match=rf"{old} moved to {MOVED[old][0]}.*none of them has 'no_such_name'"):
        exec(f"from {old} import no_such_name")


def test_kdhub_registry_keeps_the_names_of_the_former_module():
    from kdhub.contract.validation import format_validation_error as formatter
    from kdhub.registry import Registry, format_validation_error
    from kdhub.registry.catalog import Registry as catalog_registry

    assert (Registry, format_validation_error) == (catalog_registry, formatter)
