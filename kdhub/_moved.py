"""Old import paths of modules that moved into the layer packages keep working, with a warning.

``from kdhub.config import RunConfig`` still works (a :class:`DeprecationWarning` names the new
module, ``kdhub.contract.config``); a name that is in none of the new modules fails with an
``ImportError`` that lists them. Plugin authors import the public names from :mod:`kdhub`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from typing import Any

__all__ = ["MOVED", "install"]

_CONTRACT = (
    "base command dataset errors figures functional hookspecs method metric model outputs policy runlog runview tables"
)
MOVED: dict[str, tuple[str, ...]] = {
    **{f"kdhub.{name}": (f"kdhub.contract.{name}",) for name in _CONTRACT.split()},
    "kdhub.config": (
        "kdhub.contract.config",
        "kdhub.contract.config_loading",
        "kdhub.registry.resolve",
        "kdhub.registry.reference",
    ),
    "kdhub.plugins": ("kdhub.registry.loading",),
    "kdhub.reference": ("kdhub.registry.reference",),
    "kdhub.demo": ("kdhub.commands.demo",),
    "kdhub.dryrun": ("kdhub.commands.dryrun",),
    "kdhub.evaluate": ("kdhub.commands.evaluate",),
    "kdhub.export": ("kdhub.commands.export", "kdhub.registry.student"),
}
"""Each former module and the modules its names are in now (in the order they are looked up)."""


class _MovedModule(types.ModuleType):
    """Stands for a former module: each name is looked up in the new modules, with a warning."""

    _kdhub_targets: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        found = [t for t in self._kdhub_targets if name in vars(importlib.import_module(t))]
        # the module that defines it, where another one only re-imports it
        home = [t for t in found if getattr(vars(importlib.import_module(t))[name], "__module__", t) == t]
        for target in home[:1] or found[:1]:
            public = name in importlib.import_module("kdhub").__all__
            warnings.warn(
                f"{self.__name__} moved: import {name} from {'kdhub' if public else target}",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(importlib.import_module(target), name)
        raise ImportError(  # not an AttributeError: `from ... import` would replace the message
            f"{self.__name__} moved to {', '.join(self._kdhub_targets)}, and none of them has {name!r}"
        )

    def __dir__(self) -> list[str]:
        return sorted({n for t in self._kdhub_targets for n in vars(importlib.import_module(t))})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _MovedModule(spec.name, f"former module; now {', '.join(MOVED[spec.name])}")
        module._kdhub_targets = MOVED[spec.name]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the names are looked up on use."""


_FINDER = _Finder()


def install() -> None:
    """Answer imports of the former module paths (idempotent)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)
