"""Wall time of the same 4 independent runs as a study: local executor vs Ray with 2 workers.

Both sides run the same study (4 KD-free runs on digits, different seeds) from scratch under a
new parent run in one temporary MLflow store created beforehand; they alternate ``--repeats``
times in this process and the medians are compared. The Ray side includes starting and stopping
its local instance, as a user of ``kdhub study --executor ray --parallel 2`` waits for it. Each Ray
run uses 1 torch thread (its ``resources.cpus``); the local side runs with ``--local-threads``
threads (1 = the same work per run, 2 = one run using both cores).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_parallel.py --epochs 12 --repeats 2
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import torch

from kdhub.study import StudyConfig, run_study


def study(epochs: int, width: int, experiment: str) -> StudyConfig:
    base = {
        "epochs": epochs,
        "data": {"name": "digits", "batch_size": 64},
        "student": {"name": "cnn", "options": {"width": width}},
        "schedule": {"name": "cosine"},
        "metrics": ["accuracy"],
        "train": {"progress": False},
    }
    return StudyConfig.model_validate(
        {"name": "bench", "experiment": experiment, "base": base, "runs": [{"name": "run"}], "seeds": [0, 1, 2, 3]}
    )


def timed(spec: StudyConfig, uri: str, **options: object) -> tuple[float, list[float], list[float]]:
    """Wall time of the study, the test accuracies and the seconds of each run (inside its process)."""
    start = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        result = run_study(spec, uri, fresh=True, **options)  # type: ignore[arg-type]
    assert all(s == "finished" for s in result["summary"]["state"]), result["failures"]
    return time.perf_counter() - start, result["summary"]["test_acc_last"], result["summary"]["seconds"]


def _plain_run(config: dict) -> float:
    from kdhub.engine.runner import run

    torch.set_num_threads(1)
    return run(config, track=False).last_acc


def reference(spec: StudyConfig) -> tuple[float, float]:
    """The same 4 runs without kdhub's study machinery or MLflow: one after another, then 2 processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from kdhub.study import expand

    configs = [r.config for r in expand(spec)]
    start = time.perf_counter()
    for config in configs:
        _plain_run(config)
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_plain_run, configs))
    return sequential, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12, help="epochs per run")
    parser.add_argument("--width", type=int, default=16, help="cnn width")
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats of each side")
    parser.add_argument("--local-threads", type=int, default=1, help="torch threads of the local side")
    parser.add_argument(
        "--reference", action="store_true", help="also time the runs bare: sequential vs 2 plain processes"
    )
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="kdhub-bench-"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.chdir(folder)  # MLflow puts the artifacts of a new SQLite store in ./mlruns
    timed(study(1, 4, "warm-up"), uri)  # creates the store and imports everything once
    spec_local, spec_ray = study(args.epochs, args.width, "local"), study(args.epochs, args.width, "ray")
    local, ray, runs_local, runs_ray = [], [], [], []
    load = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        torch.set_num_threads(args.local_threads)
        seconds, acc_local, per_run = timed(spec_local, uri)
        local.append(seconds)
        runs_local += per_run
        seconds, acc_ray, per_run = timed(spec_ray, uri, executor="ray", parallel=2)
        ray.append(seconds)
        runs_ray += per_run
        load.append(os.getloadavg()[0])
        assert acc_local == acc_ray or args.local_threads != 1, (acc_local, acc_ray)
    start = time.perf_counter()
    from kdhub.study.executors import RayExecutor

    RayExecutor(parallel=2).close()
    startup = time.perf_counter() - start
    m_local, m_ray = statistics.median(local), statistics.median(ray)
    print(f"4 runs of cnn width {args.width}, {args.epochs} epochs on digits")
    print(
        f"local ({args.local_threads} thread{'s' if args.local_threads > 1 else ''}): "
        f"{', '.join(f'{s:.1f}' for s in local)} s, median {m_local:.1f} s"
    )
    print(f"ray, 2 workers x 1 thread:     {', '.join(f'{s:.1f}' for s in ray)} s, median {m_ray:.1f} s")
    print(f"ratio local / ray: {m_local / m_ray:.2f}  (Ray start + stop alone: {startup:.1f} s)")
    print(
        f"seconds per run inside its process, median: local {statistics.median(runs_local):.1f}, "
        f"ray {statistics.median(runs_ray):.1f} (a worker's first run includes importing kdhub and torch)"
    )
    print(f"1-minute load average of the machine: {', '.join(f'{v:.1f}' for v in load)} ({os.cpu_count()} cores)")
    print(f"same test accuracies on both sides: {acc_local == acc_ray}")
    if args.reference:
        sequential, two = reference(spec_local)
        print(
            f"reference without MLflow or Ray: 4 runs one after another {sequential:.1f} s, in 2 processes "
            f"{two:.1f} s, ratio {sequential / two:.2f} (what 2 processes gain on this machine now)"
        )


if __name__ == "__main__":
    main()
