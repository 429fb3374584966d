"""Speed settings of a run: CPU threads, cuDNN autotuning, ``torch.compile`` and the teacher's forward.

- :func:`configure_process` sets torch's intra-op threads (``train.threads``, ``$KDHUB_THREADS``;
  see :func:`resolve_threads`) and, on CUDA, cuDNN autotuning, once at the start of a run.
- :func:`compile_model` compiles a model (feature hooks included) and falls back to eager
  execution with one warning line naming the reason when the compiler fails, at any call.
- :class:`TeacherForward` runs the teacher for a training step in its own precision
  (``train.teacher_amp``), grad mode (``train.teacher_grad_mode``) and compiled graph
  (``train.teacher_compile``), independently of the student.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdhub.contract.config import TrainConfig
from kdhub.contract.errors import ConfigError
from kdhub.engine.features import FeatureTaps
from kdhub.engine.heads import eval_logits

__all__ = [
    "CompiledModel",
    "TeacherForward",
    "ThreadChoice",
    "available_cores",
    "compile_model",
    "configure_process",
    "resolve_threads",
]

log = logging.getLogger("kdhub")

_interop_set = False


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count of a run and where it came from."""

    count: int
    source: str  # KDHUB_THREADS, train.threads, OMP_NUM_THREADS or auto


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _positive_int(raw: str, where: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{where}: expected an integer >= 1, got {raw!r}")
    return value


def resolve_threads(setting: int | None, env: Mapping[str, str] | None = None) -> ThreadChoice:
    """The intra-op thread count for a run, first match wins.

    1. ``$KDHUB_THREADS``; 2. ``train.threads`` (``setting``); 3. ``$OMP_NUM_THREADS`` (an explicit
    choice: Ray, schedulers and users set it), except the ``1`` that torchrun puts there by itself
    when it starts several processes per machine; 4. the cores available to the process divided by
    the processes on the machine (``$LOCAL_WORLD_SIZE`` under torchrun), at least 1.
    """
    env = os.environ if env is None else env
    if env.get("KDHUB_THREADS", "").strip():
        return ThreadChoice(_positive_int(env["KDHUB_THREADS"], "KDHUB_THREADS"), "KDHUB_THREADS")
    if setting is not None:
        return ThreadChoice(setting, "train.threads")
    local_procs = _positive_int(env.get("LOCAL_WORLD_SIZE", "1") or "1", "LOCAL_WORLD_SIZE")
    omp = env.get("OMP_NUM_THREADS", "").strip()
    torchrun_default = omp == "1" and local_procs > 1
    if omp and not torchrun_default:
        return ThreadChoice(_positive_int(omp, "OMP_NUM_THREADS"), "OMP_NUM_THREADS")
    return ThreadChoice(max(1, available_cores() // local_procs), "auto")


def configure_process(train: TrainConfig, device: torch.device) -> ThreadChoice:
    """Apply a run's process-wide speed settings; returns the thread count in effect.

    Intra-op threads are set every time; inter-op threads only once per process and only before
    torch has started inter-op work (torch refuses later). cuDNN autotunes its convolution
    algorithms on CUDA unless ``train.deterministic`` is set.
    """
    global _interop_set
    choice = resolve_threads(train.threads)
    if torch.get_num_threads() != choice.count:
        torch.set_num_threads(choice.count)
    if not _interop_set:
        _interop_set = True
        with contextlib.suppress(RuntimeError):  # inter-op work already started: keep torch's pool
            torch.set_num_interop_threads(choice.count)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not train.deterministic
    return choice


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _reason(err: BaseException) -> str:
    """One line: the error and, for a wrapped compiler error, the error that caused it."""
    root: BaseException = err
    seen = {id(err)}
    while True:
        inner = getattr(root, "inner_exception", None) or root.__cause__
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        root = inner
    text = _first_line(err) if root is err else f"{type(err).__name__} ({_first_line(root)})"
    return text[:300]


class CompiledModel:
    """A compiled model that falls back to its eager module, once and for good, when compiling fails.

    Compilation happens at the first call with a new input shape, so every call is guarded: a
    failure logs one warning line naming the model and the reason, then the call is repeated
    eagerly (an error that is not the compiler's then surfaces from the eager call, unchanged).
    """

    def __init__(self, eager: nn.Module, compiled: Callable[..., Any], who: str) -> None:
        self.eager = eager
        self.who = who
        self._compiled: Callable[..., Any] | None = compiled
        self.fallback_reason: str | None = None

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            return self.eager(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as err:
            self._fall_back(_reason(err))
            return self.eager(*args, **kwargs)

    def _fall_back(self, reason: str) -> None:
        self._compiled = None
        self.fallback_reason = reason
        log.warning("torch.compile failed for the %s, running it eagerly: %s", self.who, reason)


def compile_model(
    model: nn.Module, enabled: bool, who: str, backend: str | Callable[..., Any] = "inductor"
) -> nn.Module | CompiledModel:
    """``model`` compiled with ``torch.compile`` (static shapes), or ``model`` itself when not ``enabled``.

    Forward hooks registered before (feature taps) are traced into the graph. Where the compiler
    cannot start (unsupported Python or platform) or fails at a call, the model runs eagerly with
    one warning line naming ``who`` and the reason.
    """
    if not enabled:
        return model
    try:
        compiled = torch.compile(model, backend=backend, dynamic=False)
    except Exception as err:
        wrapper = CompiledModel(model, model, who)
        wrapper._fall_back(_reason(err))
        return wrapper
    return CompiledModel(model, compiled, who)


def _usable(t: Tensor) -> Tensor:
    """A tensor made in inference mode cannot be saved for backward: copy it (outside inference mode)."""
    return t.clone() if t.is_inference() else t


class TeacherForward:
    """The teacher's forward pass of a training step: logits (float32) and tapped features.

    Runs under ``torch.no_grad`` or ``torch.inference_mode`` (``train.teacher_grad_mode``), with
    its own autocast precision (``train.teacher_amp``, default ``train.amp``), compiled when
    ``train.teacher_compile`` (default ``train.compile``) is set, in channels_last when
    ``train.channels_last`` is set. ``teacher`` is converted in place (memory format only); its
    eager module stays what evaluation and checkpoints use.
    """

    def __init__(
        self, teacher: nn.Module, taps: FeatureTaps | None, train: TrainConfig, device: torch.device, name: str
    ) -> None:
        self.amp = train.teacher_amp if train.teacher_amp is not None else train.amp
        self.inference_mode = train.teacher_grad_mode == "inference_mode"
        self.device_type = device.type
        self.taps = taps
        if train.channels_last:
            teacher.to(memory_format=torch.channels_last)
        compile_teacher = train.teacher_compile if train.teacher_compile is not None else train.compile
        self.model = compile_model(teacher, compile_teacher, f"teacher ({name})", train.compile_backend)

    def __call__(self, images: Tensor) -> tuple[Tensor, dict[str, list[Tensor]]]:
        grad_mode = torch.inference_mode() if self.inference_mode else torch.no_grad()
        with grad_mode, torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
            logits = eval_logits(self.model(images))  # a teacher with several heads teaches their mean
            feats = self.taps.collect() if self.taps is not None else {}
        logits = logits.float()
        if self.inference_mode:
            logits = _usable(logits)
            feats = {role: [_usable(t) for t in tensors] for role, tensors in feats.items()}
        return logits, feats
