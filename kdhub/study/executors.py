"""Where the runs of a study execute: in the study's process (local) or as Ray tasks (ray).

Both take :class:`~kdhub.study.worker.RunTask` objects and give back
:class:`~kdhub.study.worker.Outcome` objects; the study decides what runs when.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kdhub.contract.errors import KdhubError
from kdhub.study.spec import Resources
from kdhub.study.worker import Outcome, RunTask, execute

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "check_executor", "make_executor"]

EXECUTORS = ("local", "ray")


class Executor:
    """Runs tasks; ``slots`` of them at a time."""

    name = "executor"
    slots = 1
    cpus_per_run = 1.0  # what a task with no declared cpus gets

    def submit(self, task: RunTask, resources: Resources) -> None:
        raise NotImplementedError

    def running(self) -> int:
        raise NotImplementedError

    def wait(self) -> list[Outcome]:
        """Block until at least one submitted task ended; their outcomes."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop the running tasks (on Ctrl-C); each run ends KILLED and can be resumed."""

    def close(self) -> None:
        """Release what the executor started."""

    def describe(self) -> str:
        return self.name

    def check(self, resources: Resources, where: str) -> None:
        """Raise if a run with these resources could never start."""


class LocalExecutor(Executor):
    """Today's behaviour: one run after the other, in this process."""

    name = "local"

    def __init__(self) -> None:
        self._queue: list[RunTask] = []

    def submit(self, task: RunTask, resources: Resources) -> None:
        self._queue.append(task)

    def running(self) -> int:
        return len(self._queue)

    def wait(self) -> list[Outcome]:
        return [execute(self._queue.pop(0))]

    def cancel(self) -> None:
        self._queue.clear()


_TEMP_PREFIX, _OWNER = "kdhub-ray-", "kdhub-owner.pid"


def _remove_orphans(root: str) -> None:
    """Remove the temporary folders of local Ray instances whose study process was killed (SIGKILL)."""
    for folder in Path(root).glob(f"{_TEMP_PREFIX}*"):
        try:
            pid = int((folder / _OWNER).read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError):
            continue  # being created, or not ours to judge


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise KdhubError("--executor ray needs Ray, which is not installed: pip install 'kdhub[ray]'") from None
    return ray


class RayExecutor(Executor):
    """Each run is a Ray task with the run's declared resources.

    Without ``address``, starts a local Ray instance (``parallel`` x the study's cpus per run CPUs,
    its temporary files and logs in a temporary folder removed at the end) and stops it after the
    study; with ``address``, joins that cluster and leaves it running.
    """

    name = "ray"

    def __init__(self, parallel: int | None = None, address: str | None = None, cpus_per_run: float = 1.0) -> None:
        ray = self.ray = _import_ray()
        self.cpus_per_run = cpus_per_run
        self._refs: dict[Any, RunTask] = {}
        self._temp: str | None = None
        self._owner = False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        quiet = {"logging_level": logging.ERROR, "log_to_driver": True, "include_dashboard": False}
        if ray.is_initialized():
            pass  # a session the caller started (a notebook): use it, leave it running
        elif address:
            from kdhub.study.checks import probe_ray_address

            probe_ray_address(address)  # within KDHUB_RAY_CONNECT_TIMEOUT, not Ray's minutes of retries
            try:
                ray.init(address=address, **quiet)
            except Exception as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise KdhubError(f"--address {address}: cannot join the Ray cluster: {first}") from None
            self._owner = True
        else:
            cpus = (os.cpu_count() or 1) if parallel is None else max(1, round(parallel * cpus_per_run))
            # a short path: Ray's sockets live under it and Unix socket paths are limited to 107 bytes
            root = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
            _remove_orphans(root)
            self._temp = tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=root)
            Path(self._temp, _OWNER).write_text(str(os.getpid()))
            logging.getLogger("ray").setLevel(logging.ERROR)
            # Ray starts workers at niceness 15: on a machine shared with other work the runs, the
            # study's whole point, would get a fraction of the CPU a local run gets
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=cpus, _temp_dir=self._temp, **quiet)
            self._owner = True
        resources = ray.cluster_resources()
        self.gpus_default = 1.0 if resources.get("GPU", 0) > 0 else 0.0
        capacity = (
            resources.get("GPU", 0) / self.gpus_default if self.gpus_default else resources.get("CPU", 1) / cpus_per_run
        )
        self.slots = max(1, parallel if parallel is not None else int(capacity))
        # max_calls=0: a worker process executes run after run, GPU runs included (Ray makes a function declared
        # with GPUs single-use unless told), so a study of short runs pays importing torch and MLflow and opening
        # the store once per worker; execute() isolates a failing run, and Ray replaces a process that died
        self._remote = ray.remote(max_retries=0, max_calls=0)(execute)
        self._cluster = f"{int(resources.get('CPU', 0))} CPUs, {int(resources.get('GPU', 0))} GPUs"
        self._address = address

    def describe(self) -> str:
        where = f"cluster {self._address}" if self._address else "local Ray instance"
        return f"ray ({where}: {self._cluster}; {self.slots} runs at a time)"

    def gpus(self, resources: Resources) -> float:
        return self.gpus_default if resources.gpus is None else resources.gpus

    def check(self, resources: Resources, where: str) -> None:
        """Refuse a run that no node of a local instance could ever take (it would wait forever)."""
        if self._address:
            return  # a cluster may grow (autoscaling)
        total = self.ray.cluster_resources()
        for kind, need in (("CPU", resources.cpus), ("GPU", self.gpus(resources))):
            if need > total.get(kind, 0):
                raise KdhubError(
                    f"{where}: needs {need:g} {kind}s and the local Ray instance has {total.get(kind, 0):g}; "
                    "lower resources or give --parallel / --address"
                )

    def submit(self, task: RunTask, resources: Resources) -> None:
        ref = self._remote.options(num_cpus=resources.cpus, num_gpus=self.gpus(resources)).remote(task)
        self._refs[ref] = task

    def running(self) -> int:
        return len(self._refs)

    def wait(self) -> list[Outcome]:
        ready: list[Any] = []
        while not ready:  # a timeout, so that Ctrl-C and SIGTERM reach this process between waits
            ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=0.5)
        outcomes = []
        for ref in ready:
            task = self._refs.pop(ref)
            try:
                outcomes.append(self.ray.get(ref))
            except Exception as err:  # the worker process died (out of memory, a crash) or Ray failed
                first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
                outcomes.append(Outcome(task.key, "FAILED", error=f"the Ray task died: {first.strip()}"))
        return outcomes

    def cancel(self) -> None:
        # KeyboardInterrupt inside each task: the engine ends its run KILLED with a resumable last.pt
        for ref in list(self._refs):
            self.ray.cancel(ref)
        if self._refs:
            self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=30)
        self._refs.clear()

    def close(self) -> None:
        if self._owner:
            self.ray.shutdown()
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)


def check_executor(name: str, parallel: int | None = None, address: str | None = None) -> None:
    """Refuse executor options that do not go together (before anything starts)."""
    if name not in EXECUTORS:
        raise KdhubError(f"--executor: unknown executor {name!r} (choose from {', '.join(EXECUTORS)})")
    if parallel is not None and parallel < 1:
        raise KdhubError(f"--parallel: must be >= 1, got {parallel}")
    if name == "local" and parallel not in (None, 1):
        raise KdhubError("--parallel: the local executor runs one run at a time; use --executor ray")
    if address is not None:
        from kdhub.study.checks import check_address

        check_address(name, address)
    if name == "ray":
        _import_ray()


def make_executor(
    name: str, parallel: int | None = None, address: str | None = None, cpus_per_run: float = 1.0
) -> Executor:
    check_executor(name, parallel, address)
    if name == "ray":
        return RayExecutor(parallel, address, cpus_per_run)
    return LocalExecutor()
