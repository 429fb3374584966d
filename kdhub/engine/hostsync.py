"""Host synchronisation checks of the training steps.

A training step must not wait for the device: no ``.item()``, no ``if tensor:``, no
data-dependent shapes. The engine passes its per-step batch iterators through
:func:`training_steps`, which costs nothing unless an observer is active; an observer (a context
manager factory) is then entered around each step, from fetching its batch to the end of its
optimizer step. The once-per-epoch points (the epoch's statistics, evaluation, the policy's
``epoch_ended``) lie outside the steps.

Two observers:

- :class:`HostSyncCounter` (any device) records, during steps only, Python-level host reads
  (``Tensor.item``, ``tolist``, ``__bool__``, ``__float__``, ``__int__``, ``__index__``, ``cpu``,
  ``numpy``) and the aten operators that synchronise on CUDA (``nonzero``, boolean-mask
  indexing, ``multinomial``, ``unique``, ``bincount``, ...), with the line that made them::

      with HostSyncCounter() as syncs:
          trainer.fit()
      assert not syncs.events, syncs.report()

- :class:`CudaSyncGuard` sets ``torch.cuda.set_sync_debug_mode`` (``"error"`` or ``"warn"``)
  during steps, so CUDA itself reports every synchronising call.
"""

from __future__ import annotations

import contextlib
import traceback
import weakref
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["CudaSyncGuard", "HostSyncCounter", "NoStep", "SyncEvent", "observe_steps", "training_steps"]

T = TypeVar("T")
StepObserver = Callable[[], contextlib.AbstractContextManager[Any]]

_observers: list[StepObserver] = []
_live: weakref.WeakSet[Generator[Any, None, None]] = weakref.WeakSet()


def training_steps(batches: Iterable[T]) -> Iterable[T]:
    """The engine's per-step batch iterator; with an active observer, each step runs inside it."""
    if not _observers:
        return batches
    steps = _observed(batches, tuple(_observers))
    _live.add(steps)
    return steps


class NoStep(Exception):
    """Raised inside the observers when the batches ran out: that region was not a step."""


def _observed(batches: Iterable[T], observers: tuple[StepObserver, ...]) -> Generator[T, None, None]:
    iterator = iter(batches)
    while True:
        try:
            with contextlib.ExitStack() as stack:
                for observer in observers:
                    stack.enter_context(observer())
                try:
                    batch = next(iterator)
                except StopIteration:
                    raise NoStep from None
                yield batch  # the step runs here, still inside the observers
        except NoStep:
            return


@contextlib.contextmanager
def observe_steps(observer: StepObserver) -> Iterator[None]:
    """Enter ``observer()`` around every training step started inside this block."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)
        # a step that raised leaves its iterator suspended inside the observers: leave them now
        for steps in list(_live):
            steps.close()


@dataclass(frozen=True)
class SyncEvent:
    kind: str  # "item", "bool", ..., or "aten.nonzero"
    where: str  # file:line of the innermost frame outside torch and this module


_PY_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")
# aten operators that wait for the device on CUDA (their output size or a check depends on values)
_SYNC_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "multinomial",
    "bincount",
    "histc",
    "repeat_interleave",
    "equal",
    "is_nonzero",
}
_TORCH_DIR = str(Path(torch.__file__).parent)
_THIS_FILE = __file__


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not frame.filename.startswith(_TORCH_DIR) and frame.filename != _THIS_FILE:
            return f"{frame.filename}:{frame.lineno}"
    return "?"


class _AtenSyncs(TorchDispatchMode):
    def __init__(self, record: Callable[[str], None]) -> None:
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.overloadpacket.__name__
        if name in _SYNC_OPS or (name in ("index", "index_put", "index_put_") and _bool_index(args)):
            self.record(f"aten.{name}")
        return func(*args, **(kwargs or {}))


def _bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class HostSyncCounter:
    """Records host synchronisations made during training steps (see the module docstring).

    Tensor methods are patched for the whole ``with`` block but count only inside steps; the
    aten-level check runs only inside steps. ``ops=False`` keeps the Python-level checks only.
    """

    def __init__(self, ops: bool = True) -> None:
        self.ops = ops
        self.events: list[SyncEvent] = []
        self.steps = 0
        self._in_step = False
        self._saved: dict[str, Any] = {}
        self._context: contextlib.AbstractContextManager[None] | None = None

    def _record(self, kind: str) -> None:
        if self._in_step:
            self.events.append(SyncEvent(kind, _caller()))

    def _patch(self) -> None:
        for name in _PY_METHODS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def wrapper(tensor: Any, *args: Any, _original: Any = original, _kind: str = name, **kwargs: Any) -> Any:
                if self._in_step:
                    self._in_step = False  # one event per call, not for what the call does inside
                    try:
                        self.events.append(SyncEvent(_kind.strip("_"), _caller()))
                        return _original(tensor, *args, **kwargs)
                    finally:
                        self._in_step = True
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, wrapper)

    def _unpatch(self) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()

    @contextlib.contextmanager
    def _step(self) -> Iterator[None]:
        self.steps += 1
        mode = _AtenSyncs(self._record) if self.ops else contextlib.nullcontext()
        self._in_step = True
        try:
            with mode:
                yield
        except NoStep:
            self.steps -= 1
            raise
        finally:
            self._in_step = False

    def __enter__(self) -> HostSyncCounter:
        self._patch()
        self._context = observe_steps(self._step)
        self._context.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._in_step = False
        if self._context is not None:
            self._context.__exit__(None, None, None)
        self._unpatch()

    def counts(self) -> Counter[str]:
        return Counter(e.kind for e in self.events)

    def report(self, limit: int = 10) -> str:
        """``kind at file:line (n times)`` for the most frequent places."""
        places = Counter((e.kind, e.where) for e in self.events)
        lines = [f"{kind} at {where} ({n}x)" for (kind, where), n in places.most_common(limit)]
        return f"{len(self.events)} host syncs in {self.steps} steps: " + "; ".join(lines)


class CudaSyncGuard:
    """``torch.cuda.set_sync_debug_mode(mode)`` during training steps (``"error"`` raises at the sync)."""

    def __init__(self, mode: str = "error") -> None:
        self.mode = mode
        self.steps = 0
        self._context: contextlib.AbstractContextManager[None] | None = None
        self._outside = 0

    @contextlib.contextmanager
    def _step(self) -> Iterator[None]:
        self.steps += 1
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(self.mode)
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)

    def __enter__(self) -> CudaSyncGuard:
        self._outside = torch.cuda.get_sync_debug_mode()
        self._context = observe_steps(self._step)
        self._context.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
        # a step that raised may leave its (suspended) iterator alive in the traceback
        torch.cuda.set_sync_debug_mode(self._outside)
