"""The catalog cache: what ``kdhub --help``, ``kdhub list`` and ``kdhub show`` print, kept on disk so that
they answer without importing a plugin (or torch) while the installed plugins stay the same.

The catalog is written after a full load of the entry points (:func:`kdhub.registry.loading.save_catalog`)
under a key that changes whenever anything it was made from may have changed:

- the ``kdhub`` entry points (names, values, their distributions' names and versions) and
  ``KDHUB_LOAD_PLUGINS``;
- the files (path, mtime, size) of the ``.py`` and extension modules of each entry point's top-level package
  or module, found with :func:`importlib.util.find_spec` without importing it (an edited or a new module);
- every installed distribution on ``sys.path`` (its ``.dist-info`` / ``.egg-info`` and ``.pth`` entries
  with their mtimes: a ``pip install``, upgrade or uninstall of anything a plugin imports);
- kdhub's version, the Python version and interpreter.

The file also records the files (mtime, size) of every module the load imported from outside the
interpreter's library and the site-packages (editable installs, ``PYTHONPATH``, the current folder): a
plugin's helper module in another package, edited, makes the catalog stale too.

An entry point whose module cannot be found without importing it makes the catalog uncacheable. The folder is
``$KDHUB_CACHE_DIR`` (empty: no cache), else ``$XDG_CACHE_HOME/kdhub``, else ``~/.cache/kdhub``; it holds one
file per Python environment and set of ``sys.path`` folders with distributions in them (``python -m kdhub.cli``
in a checkout also finds its ``kdhub.egg-info``). Failing to read or write it is never an error. Imports no
torch and no pydantic.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import site
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from kdhub.contract.version import __version__

__all__ = ["FORMAT", "GROUP", "cache_dir", "cache_file", "catalog_key", "module_stamps", "read", "write"]

GROUP = "kdhub"
"""The entry-point group of kdhub plugins."""
FORMAT = 1
"""The layout of the catalog file; a file of another layout is ignored (and rewritten)."""
_MODULE_SUFFIXES = (".py", *importlib.machinery.EXTENSION_SUFFIXES)
_INSTALLED_SUFFIXES = (".dist-info", ".egg-info", ".egg-link", ".egg", ".pth")
_SINCE_NS = time.time_ns()
"""When this process imported this module: in ``kdhub``, before any plugin; a module file changed since may
have been imported in its former version."""


def cache_dir() -> Path | None:
    """The cache folder: ``$KDHUB_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdhub``, else ``~/.cache/kdhub``; None
    when ``KDHUB_CACHE_DIR`` is set but empty (no cache)."""
    explicit = os.environ.get("KDHUB_CACHE_DIR")
    if explicit is not None:
        return Path(explicit) if explicit else None
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path(os.path.expanduser("~")) / ".cache"
    return base / "kdhub"


def cache_file(key: str) -> Path | None:
    """The catalog file for ``key`` (its first part names the environment); None: no cache."""
    folder = cache_dir()
    return None if folder is None else folder / f"catalog-{key.partition('-')[0]}.json"


def _module_files(top: str, digest: Any) -> bool:
    """Add the module files of the top-level package or module ``top`` to ``digest``; False when it cannot be
    found without importing it."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    roots = list(spec.submodule_search_locations or ([spec.origin] if spec.has_location and spec.origin else []))
    if not roots:
        return False
    for root in roots:
        digest.update(f"package {top} {root}\n".encode())
        if os.path.isfile(root):
            stat = os.stat(root)
            digest.update(f"{root} {stat.st_mtime_ns} {stat.st_size}\n".encode())
            continue
        if not os.path.isdir(root):  # in a zip file, say: its files cannot be watched
            return False
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if d != "__pycache__" and not d.startswith("."))
            for name in sorted(files):
                if name.endswith(_MODULE_SUFFIXES):
                    path = os.path.join(folder, name)
                    with contextlib.suppress(OSError):  # removed while we walk: the key differs anyway
                        stat = os.stat(path)
                        digest.update(f"{path} {stat.st_mtime_ns} {stat.st_size}\n".encode())
    return True


def _installed(digest: Any) -> list[str]:
    """Add every distribution (and ``.pth`` file) on ``sys.path``, with its mtime, to ``digest``; the folders
    that have any."""
    folders = []
    for entry in sys.path:
        with contextlib.suppress(OSError):
            with os.scandir(entry or ".") as found:
                names = sorted((e.name, e.stat().st_mtime_ns) for e in found if e.name.endswith(_INSTALLED_SUFFIXES))
            if names:
                folders.append(os.path.abspath(entry or "."))
                digest.update(f"path {entry}\n".encode())
                digest.update("".join(f"{name} {mtime}\n" for name, mtime in names).encode())
    return folders


def catalog_key() -> str | None:
    """``ENVIRONMENT-DIGEST``: a digest of everything the catalog depends on (see the module docstring), after
    one of the interpreter and the ``sys.path`` folders with distributions (which file it is kept in); None
    when it cannot be cached (an entry point whose module cannot be found without importing it)."""
    digest = hashlib.sha256()
    digest.update(f"{FORMAT} {__version__} {sys.version} {sys.executable}\n".encode())
    digest.update(f"KDHUB_LOAD_PLUGINS={os.environ.get('KDHUB_LOAD_PLUGINS')!r}\n".encode())
    entry_points = sorted(
        (ep.dist.name if ep.dist else "?", ep.dist.version if ep.dist else "", ep.name, ep.value, ep.module)
        for ep in metadata.entry_points(group=GROUP)
    )
    tops = {"kdhub"}  # kdhub's own code words what is cached
    for dist, version, name, value, module in entry_points:
        digest.update(f"entry point {dist} {version} {name} = {value}\n".encode())
        tops.add(module.partition(".")[0])
    for top in sorted(tops):
        if not _module_files(top, digest):
            return None
    folders = _installed(digest)
    environment = hashlib.sha256("\0".join([sys.prefix, sys.executable, *folders]).encode()).hexdigest()[:16]
    return f"{environment}-{digest.hexdigest()}"


def module_stamps() -> dict[str, list[int]] | None:
    """``{path: [mtime_ns, size]}`` of every imported module's file outside the interpreter's library and the
    site-packages (those change with a distribution, which the key sees); None when one changed after this
    module was imported (this process may have run the version before: a catalog made now could be stale)."""
    paths = sysconfig.get_paths()
    installed = {paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"], *site.getsitepackages()}
    installed.add(site.getusersitepackages())
    prefixes = tuple(os.path.join(os.path.realpath(p), "") for p in installed)
    stamps: dict[str, list[int]] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str):
            continue
        path = os.path.realpath(path)
        if path.startswith(prefixes):
            continue
        try:
            stat = os.stat(path)
        except OSError:  # not a file (in a zip, say): its distribution is in the key
            continue
        if stat.st_mtime_ns > _SINCE_NS:
            return None
        stamps[path] = [stat.st_mtime_ns, stat.st_size]
    return stamps


def _unchanged(stamps: Any) -> bool:
    if not isinstance(stamps, dict):
        return False
    for path, stamp in stamps.items():
        try:
            stat = os.stat(path)
        except (OSError, TypeError, ValueError):
            return False
        if stamp != [stat.st_mtime_ns, stat.st_size]:
            return False
    return True


def read(key: str) -> dict[str, Any] | None:
    """The cached catalog if it was written under ``key`` and no module file it records changed, else None."""
    path = cache_file(key)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != key:
        return None
    if not _unchanged(data.get("modules")):
        return None
    catalog = data.get("catalog")
    return catalog if _well_formed(catalog) else None


def _strings(value: Any, *keys: str) -> bool:
    return isinstance(value, dict) and all(isinstance(value.get(k), str) for k in keys)


def _well_formed(catalog: Any) -> bool:
    """The shape :func:`kdhub.registry.reference.plugin_catalog` and the CLI write (a file edited by hand is
    ignored, not a crash)."""
    if not isinstance(catalog, dict):
        return False
    kinds, commands, errors = catalog.get("kinds"), catalog.get("commands"), catalog.get("load_errors")
    return (
        isinstance(kinds, dict)
        and all(isinstance(t, dict) and all(_strings(p, "summary", "show") for p in t.values()) for t in kinds.values())
        and isinstance(commands, list)
        and all(_strings(c, "name", "help", "description") for c in commands)
        and isinstance(errors, list)
        and all(isinstance(e, str) for e in errors)
    )


def write(key: str, catalog: dict[str, Any], modules: dict[str, list[int]]) -> None:
    """Save ``catalog`` under ``key`` with the ``modules`` it was made from (:func:`module_stamps`), atomically
    (a reader sees the old file or the new one); a failure is ignored."""
    path = cache_file(key)
    if path is None:
        return
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump({"format": FORMAT, "key": key, "modules": modules, "catalog": catalog}, file, ensure_ascii=False)
        os.replace(temporary, path)
    except (OSError, TypeError, ValueError):
        with contextlib.suppress(OSError):
            temporary.unlink()
