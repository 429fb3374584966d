"""kdhub's training images/s on the CPU by intra-op thread count, alternating in one process.

Shows what ``train.threads`` / ``$KDHUB_THREADS`` buys: the same KD run (engine_overhead's
config) is timed epoch by epoch while ``torch.set_num_threads`` alternates between the counts
given (default: 1 and torch's own default, read at start-up, i.e. ``$OMP_NUM_THREADS`` or the
physical cores). Run it without ``OMP_NUM_THREADS`` to see torch's default; the machine's load
average is reported, since contention is what makes more threads slower::

    env -u OMP_NUM_THREADS .venv/bin/python benchmarks/threads.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch

DEFAULT_THREADS = torch.get_num_threads()  # before kdhub sets anything

from _common import kd_config, kdhub_epoch  # noqa: E402

import kdhub  # noqa: E402
from kdhub.contract.config_loading import parse_config  # noqa: E402
from kdhub.engine.loop import Trainer  # noqa: E402
from kdhub.engine.speed import available_cores  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default=None, help="comma-separated counts (default: 1 and torch's default)")
    args = parser.parse_args()
    counts = [int(c) for c in args.threads.split(",")] if args.threads else sorted({1, DEFAULT_THREADS})
    load_before = os.getloadavg()
    trainer = Trainer(parse_config(kd_config(args.student, args.teacher, args.batch, args.steps, "cpu")))
    kdhub_epoch(trainer, 1)  # warm-up
    images_per_s: dict[int, list[float]] = {c: [] for c in counts}
    epoch = 2
    for _ in range(args.repeats):
        for count in counts:
            torch.set_num_threads(count)
            images_per_s[count].append(round(kdhub_epoch(trainer, epoch), 1))
            epoch += 1
    median = {c: statistics.median(v) for c, v in images_per_s.items()}
    result = {
        "pair": f"{args.teacher}->{args.student}",
        "batch": args.batch,
        "steps_per_epoch": args.steps,
        "torch_default_threads": DEFAULT_THREADS,
        "cores_available": available_cores(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "images_per_s": images_per_s,
        "median_images_per_s": median,
        "ratio_to_1_thread": {c: round(m / median[counts[0]], 3) for c, m in median.items()},
        "kdhub_version": kdhub.__version__,
    }
    trainer.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
