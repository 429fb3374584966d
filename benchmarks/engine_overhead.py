"""kdhub's loop against a hand-written KD loop on the same data, models and steps.

Reports images/s of both, measured alternately in one process, and their ratio (kdhub / hand-written).
The hand-written loop (``benchmarks/_common.py``) is what a careful user would write: data on the
device, the same on-device augmentation, teacher in eval without gradients, one optimizer step per
batch, no per-step sync. The thread count in effect is reported (``--threads``, else kdhub's rule:
``$KDHUB_THREADS``, ``$OMP_NUM_THREADS``, the cores available).

    .venv/bin/python benchmarks/engine_overhead.py --student resnet8 --teacher resnet20 --steps 30
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from _common import HandLoop, kd_config, kdhub_epoch

import kdhub
from kdhub.contract.config_loading import parse_config
from kdhub.engine.loop import Trainer, pick_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="train.threads (default: kdhub's rule)")
    args = parser.parse_args()
    cfg = kd_config(args.student, args.teacher, args.batch, args.steps, args.device, args.amp)
    cfg["train"]["threads"] = args.threads
    trainer = Trainer(parse_config(cfg))
    hand = HandLoop(trainer)
    kdhub_epoch(trainer, 1)  # warm-up both paths
    hand.epoch()
    ours, theirs = [], []
    for r in range(args.repeats):
        ours.append(kdhub_epoch(trainer, r + 2))
        theirs.append(hand.epoch())
    result = {
        "device": str(pick_device(args.device)),
        "threads": torch.get_num_threads(),
        "pair": f"{args.teacher}->{args.student}",
        "batch": args.batch,
        "steps": args.steps,
        "kdhub_images_per_s": statistics.median(ours),
        "hand_written_images_per_s": statistics.median(theirs),
        "ratio": statistics.median(ours) / statistics.median(theirs),
        "kdhub_version": kdhub.__version__,
    }
    trainer.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
