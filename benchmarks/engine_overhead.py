"""kdhub's loop against a hand-written KD loop on the same data, models and steps.

Reports images/s of both, measured alternately in one process, and their ratio (kdhub / hand-written).
The hand-written loop is what a careful user would write: data on the device, the same on-device
augmentation, teacher in eval without gradients, one optimizer step per batch, no per-step sync.

    .venv/bin/python benchmarks/engine_overhead.py --student resnet8 --teacher resnet20 --steps 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import kdhub
from kdhub.config import parse_config
from kdhub.engine.data import augment
from kdhub.engine.loop import Trainer, pick_device


def config(args: argparse.Namespace) -> dict:
    return {
        "seed": 0,
        "epochs": 1,
        "data": {
            "name": "synthetic",
            "options": {
                "num_classes": 100,
                "image_size": 32,
                "train_size": args.batch * args.steps,
                "test_size": 64,
                "crop_padding": 4,
                "horizontal_flip": True,
            },
            "batch_size": args.batch,
        },
        "student": args.student,
        "teacher": {"name": args.teacher},
        "ce_weight": 0.1,
        "methods": [{"name": "kd", "weight": 0.9, "options": {"temperature": 4}}],
        "metrics": [],
        "train": {"progress": False, "device": args.device, "amp": args.amp},
    }


def hand_written(trainer: Trainer) -> float:
    """One epoch of a plain KD loop over the trainer's own data and models; returns images/s."""
    data, student, teacher = trainer.data, trainer.student, trainer.teacher
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    split = data.splits["train"]  # the in-memory data path: the hand loop reads its tensors directly
    gen = torch.Generator(device=data.device).manual_seed(0)
    order = torch.randperm(len(split), device=data.device, generator=gen)
    bs = trainer.batch_size
    _sync(data.device)
    start = time.perf_counter()
    for i in range(0, len(split) - bs + 1, bs):
        index = order[i : i + bs]
        x = data.normalise(augment(split.images[index], data.bundle.augmentation, gen))
        y = split.labels[index]
        with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=trainer.config.train.amp == "bf16"):
            s = student(x)
            with torch.no_grad():
                t = teacher(x)
        s, t = s.float(), t.float()
        kd = F.kl_div(F.log_softmax(s / 4, 1), F.log_softmax(t / 4, 1), reduction="batchmean", log_target=True) * 16
        loss = 0.1 * F.cross_entropy(s, y) + 0.9 * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(data.device)
    return len(split) / (time.perf_counter() - start)


def kdhub_epoch(trainer: Trainer, epoch: int) -> float:
    _sync(trainer.device)
    start = time.perf_counter()
    trainer._train_epoch(epoch)
    _sync(trainer.device)
    return trainer.data.size("train") / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"])
    args = parser.parse_args()
    trainer = Trainer(parse_config(config(args)))
    kdhub_epoch(trainer, 1)  # warm-up both paths
    hand_written(trainer)
    ours, theirs = [], []
    for r in range(args.repeats):
        ours.append(kdhub_epoch(trainer, r + 2))
        theirs.append(hand_written(trainer))
    result = {
        "device": str(pick_device(args.device)),
        "pair": f"{args.teacher}->{args.student}",
        "batch": args.batch,
        "steps": args.steps,
        "kdhub_images_per_s": statistics.median(ours),
        "hand_written_images_per_s": statistics.median(theirs),
        "ratio": statistics.median(ours) / statistics.median(theirs),
        "kdhub_version": kdhub.__version__,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
