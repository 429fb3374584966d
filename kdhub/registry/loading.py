"""The plugin manager: loads the ``kdhub`` entry points one by one into the registry.

- A plugin that fails to import or to register is recorded (``load_failures()``) and skipped;
  ``KDHUB_STRICT_PLUGINS=1`` makes it fatal.
- ``KDHUB_LOAD_PLUGINS=a,b`` loads only those distributions besides the built-ins;
  ``KDHUB_LOAD_PLUGINS=""`` loads the built-ins only.
- ``KDHUB_TRACE_PLUGINS=1`` prints the traceback of every load failure to stderr.
- Each ``register(cls)`` call is checked on its own: a refused class is recorded as a failure and
  the plugin's later ``register`` calls still happen (the outcome never depends on the order).
- A lifecycle hook that raises ends the run FAILED with a :class:`PluginHookError` naming the plugin.
- :func:`cached_catalog` / :func:`save_catalog`: what ``kdhub list`` and ``show`` print, from the catalog
  cache (:mod:`kdhub.registry.cache`) while it is fresh and nothing was registered by hand.

Importing this module imports neither torch nor any plugin: the registry is made on first use.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from kdhub.contract import hookspecs
from kdhub.contract.errors import KdhubError, PluginLoadError
from kdhub.registry import cache
from kdhub.registry.cache import GROUP

if TYPE_CHECKING:
    from kdhub.registry.catalog import Registry

__all__ = [
    "LIFECYCLE_HOOKS",
    "LoadFailure",
    "PluginHookError",
    "PluginInfo",
    "cached_catalog",
    "get_registry",
    "load_failures",
    "loaded_plugins",
    "notify",
    "plugin_classes",
    "register_module",
    "reset",
    "save_catalog",
]

BUILTIN_DISTRIBUTION = "kdhub"
LIFECYCLE_HOOKS = ("kdhub_run_started", "kdhub_epoch_ended", "kdhub_run_finished")


class PluginHookError(KdhubError):
    """A plugin's lifecycle hook raised; the message names the plugin and the hook."""


@dataclass
class LoadFailure:
    distribution: str
    entry_point: str
    error: str
    detail: str = ""


@dataclass
class PluginInfo:
    """One loaded entry point (or module registered by hand) and what it registered."""

    name: str
    distribution: str
    version: str
    module: str
    registered: dict[str, list[str]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)


@dataclass
class _State:
    manager: pluggy.PluginManager
    registry: Registry
    infos: list[PluginInfo]
    failures: list[LoadFailure]
    cache_key: str | None = None  # the catalog key taken before this load; None once a plugin is added by hand


_state: _State | None = None
_pending_key: str | None = None  # the key a cache miss computed, for the load that follows


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _strict() -> bool:
    return os.environ.get("KDHUB_STRICT_PLUGINS", "") not in ("", "0", "false", "False")


def _selected() -> set[str] | None:
    raw = os.environ.get("KDHUB_LOAD_PLUGINS")
    if raw is None:
        return None
    return {_normalise(n) for n in raw.split(",") if n.strip()} | {BUILTIN_DISTRIBUTION}


def _trace() -> bool:
    return os.environ.get("KDHUB_TRACE_PLUGINS", "") not in ("", "0", "false", "False")


def _fail(state: _State, failure: LoadFailure) -> None:
    if _trace() and failure.detail:
        print(
            f"kdhub: plugin {failure.entry_point!r} from {failure.distribution}: {failure.error}\n{failure.detail}",
            file=sys.stderr,
        )
    if _strict():
        raise PluginLoadError(f"plugin {failure.entry_point!r} from {failure.distribution}: {failure.error}")
    state.failures.append(failure)
    state.registry.load_errors.append(
        f"plugin {failure.entry_point!r} from {failure.distribution} failed to load: `kdhub plugins` says why"
    )


def _new_state() -> _State:
    # deferred: the registry's kinds import the plugin bases, hence torch (`kdhub list` from the cache does not)
    from kdhub.registry.catalog import Registry

    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    return _State(manager, Registry(), [], [])


def _load() -> _State:
    global _pending_key
    state = _new_state()
    state.cache_key, _pending_key = _pending_key, None
    selected = _selected()
    seen: set[tuple[str, str]] = set()
    entry_points = sorted(
        metadata.entry_points(group=GROUP),
        key=lambda ep: (ep.dist is None or _normalise(ep.dist.name) != BUILTIN_DISTRIBUTION, ep.name),
    )
    for ep in entry_points:
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else ""
        if (dist, ep.name) in seen or (selected is not None and _normalise(dist) not in selected):
            continue
        seen.add((dist, ep.name))
        try:
            module = ep.load()
        except Exception as err:
            _fail(
                state, LoadFailure(dist, ep.name, f"import failed: {type(err).__name__}: {err}", traceback.format_exc())
            )
            continue
        _register(state, module, ep.name, dist, version)
    return state


def _register(state: _State, module: Any, name: str, dist: str, version: str) -> None:
    try:
        state.manager.register(module, name=f"{dist}:{name}")
    except Exception as err:
        _fail(
            state, LoadFailure(dist, name, f"registration failed: {type(err).__name__}: {err}", traceback.format_exc())
        )
        return
    info = PluginInfo(name, dist, version, getattr(module, "__name__", repr(module)))
    for hook_name in LIFECYCLE_HOOKS:
        if any(i.plugin is module for i in getattr(state.manager.hook, hook_name).get_hookimpls()):
            info.hooks.append(hook_name)
    for kind, hook_name in hookspecs.REGISTER_HOOKS.items():
        impls = [i for i in getattr(state.manager.hook, hook_name).get_hookimpls() if i.plugin is module]
        if not impls:
            continue
        added: list[str] = []

        def register(cls: type[Any], kind: str = kind, added: list[str] = added, hook_name: str = hook_name) -> None:
            # every call stands alone: a refused class is recorded, the plugin's next calls still happen
            try:
                state.registry.add(kind, cls, dist, version)
            except Exception as err:
                what = getattr(cls, "__name__", None) or type(cls).__name__
                _fail(
                    state,
                    LoadFailure(
                        dist, name, f"{hook_name}: {what} refused: {type(err).__name__}: {err}", traceback.format_exc()
                    ),
                )
                return
            added.append(cls.name)

        try:
            impls[0].function(register=register)
        except PluginLoadError:
            raise
        except Exception as err:
            _fail(
                state,
                LoadFailure(dist, name, f"{hook_name} failed: {type(err).__name__}: {err}", traceback.format_exc()),
            )
        if added:
            info.registered[kind] = added
    state.infos.append(info)


def _get() -> _State:
    global _state
    if _state is None:
        _state = _load()
    return _state


def get_registry() -> Registry:
    """The registry of every loaded plugin (loaded on first use)."""
    return _get().registry


def load_failures() -> list[LoadFailure]:
    return list(_get().failures)


def loaded_plugins() -> list[PluginInfo]:
    return list(_get().infos)


def reset() -> None:
    """Forget everything loaded; the next lookup loads the entry points again."""
    global _state, _pending_key
    _state = _pending_key = None


def register_module(module: Any, name: str | None = None, distribution: str = "local") -> None:
    """Register a module or object with hook implementations by hand (notebooks, tests)."""
    state = _get()
    state.cache_key = None  # the registry is no longer what the entry points alone give: never cache it
    _register(state, module, name or str(getattr(module, "__name__", repr(module))), distribution, "")


def cached_catalog() -> dict[str, Any] | None:
    """The catalog of the installed plugins (:mod:`kdhub.registry.cache`) when a fresh one is on disk.

    None when the registry is already loaded in this process (it is the truth, plugins registered by hand
    included), when ``KDHUB_STRICT_PLUGINS`` or ``KDHUB_TRACE_PLUGINS`` asks for a real load, when it
    cannot be cached, or on a miss: then the next load keeps the key for :func:`save_catalog`.
    """
    global _pending_key
    if _state is not None or _strict() or _trace() or cache.cache_dir() is None:
        return None
    key = cache.catalog_key()
    found = cache.read(key) if key is not None else None
    _pending_key = key if found is None else None
    return found


def save_catalog(make: Callable[[Registry], dict[str, Any]]) -> None:
    """Save the catalog ``make`` makes from this process's registry, when that registry is exactly what the
    entry points gave after a :func:`cached_catalog` miss, with no load failure, and nothing changed meanwhile."""
    state = _state
    if state is None or state.cache_key is None:
        return
    key, state.cache_key = state.cache_key, None  # once: the registry stays this process's to change
    if state.failures or _strict() or _trace():
        return
    modules = cache.module_stamps()
    if modules is not None and cache.catalog_key() == key:  # nothing was installed or edited while it loaded
        cache.write(key, make(state.registry), modules)


def unregister(name: str, distribution: str = "local") -> None:
    """Remove a hand-registered plugin's lifecycle hooks (its registry entries stay)."""
    state = _get()
    state.manager.unregister(name=f"{distribution}:{name}")


def notify(hook: str, **kwargs: Any) -> None:
    """Call a lifecycle hook (``run_started``, ``epoch_ended``, ``run_finished``) on every plugin.

    The implementations run in pluggy's order (last registered first). One that raises stops the
    call with a one-line :class:`PluginHookError` naming the plugin and its distribution (the
    original exception is its ``__cause__``; ``KDHUB_TRACE_PLUGINS=1`` prints its traceback).
    """
    caller = getattr(_get().manager.hook, f"kdhub_{hook}")
    impls = caller.get_hookimpls()
    if any(i.hookwrapper or getattr(i, "wrapper", False) for i in impls):  # pluggy must drive wrappers
        try:
            caller(**kwargs)
        except Exception as err:
            first = (str(err).strip().splitlines() or [""])[0][:300]
            raise PluginHookError(f"a plugin's kdhub_{hook} raised {type(err).__name__}: {first}") from err
        return
    for impl in reversed(impls):
        arguments = {k: kwargs[k] for k in impl.argnames if k in kwargs}
        try:
            impl.function(**arguments)
        except KeyboardInterrupt:
            raise
        except Exception as err:
            plugin = impl.plugin_name or "?"
            dist, _, entry = plugin.partition(":")
            where = f"plugin {entry!r} from {dist}" if entry else f"plugin {plugin!r}"
            if _trace():
                traceback.print_exc()
            first = (str(err).strip().splitlines() or [""])[0][:300]
            raise PluginHookError(f"{where}: kdhub_{hook} raised {type(err).__name__}: {first}") from err


def plugin_classes(package: str | ModuleType, base: type[Any]) -> Iterator[type[Any]]:
    """Every named subclass of ``base`` defined in the submodules of ``package``, by module name.

    Built-in plugin packages use it in their register hooks so that a new module is picked up
    without editing a list; importing happens only when the hook runs.
    """
    pkg = importlib.import_module(package) if isinstance(package, str) else package
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, base) and obj.__module__ == module.__name__ and obj.__dict__.get("name"):
                yield obj
