"""Pieces shared by the benchmarks: the KD run config, the hand-written KD loop and the timers.

The hand-written loop is what a careful user would write: data on the device, the same on-device
augmentation, teacher in eval without gradients, one optimizer step per batch, no per-step sync;
with the same precision, memory format and compilation as the kdhub side it is compared with.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from kdhub.engine.data import augment
from kdhub.engine.loop import Trainer


def kd_config(
    student: str | dict[str, Any],
    teacher: str | dict[str, Any],
    batch: int,
    steps: int,
    device: str = "auto",
    amp: str = "none",
    channels_last: bool = False,
    compile: bool = False,
    test_size: int = 64,
    num_classes: int = 100,
    image_size: int = 32,
) -> dict[str, Any]:
    """KD (T = 4, CE 0.1, KD 0.9) on CIFAR-100-shaped synthetic data of ``batch * steps`` images."""
    return {
        "seed": 0,
        "epochs": 1,
        "data": {
            "name": "synthetic",
            "options": {
                "num_classes": num_classes,
                "image_size": image_size,
                "train_size": batch * steps,
                "test_size": test_size,
                "crop_padding": 4,
                "horizontal_flip": True,
            },
            "batch_size": batch,
            "drop_last": True,
        },
        "student": student,
        "teacher": {"name": teacher} if isinstance(teacher, str) else teacher,
        "ce_weight": 0.1,
        "methods": [{"name": "kd", "weight": 0.9, "options": {"temperature": 4}}],
        "metrics": [],
        "schedule": {"name": "constant"},
        "train": {
            "progress": False,
            "device": device,
            "amp": amp,
            "channels_last": channels_last,
            "compile": compile,
        },
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HandLoop:
    """A plain KD loop over a trainer's own data and models (one optimizer, kept across epochs)."""

    def __init__(self, trainer: Trainer) -> None:
        train = trainer.config.train
        self.trainer = trainer
        self.amp = train.amp == "bf16"
        self.channels_last = train.channels_last
        self.student: Any = trainer.student
        self.teacher: Any = trainer.teacher
        if train.compile:  # what a user writes; the compiled code is cached per module, so shared with kdhub's
            self.student = torch.compile(trainer.student, backend=train.compile_backend, dynamic=False)
            self.teacher = torch.compile(trainer.teacher, backend=train.compile_backend, dynamic=False)
        self.optimizer = torch.optim.SGD(trainer.student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.generator = torch.Generator(device=trainer.device).manual_seed(0)

    def epoch(self) -> float:
        """One epoch (drop_last) over the trainer's training split; returns images/s."""
        data = self.trainer.data
        split = data.splits["train"]  # the in-memory data path: the hand loop reads its tensors directly
        device, bs = self.trainer.device, self.trainer.batch_size
        sync(device)
        start = time.perf_counter()
        order = torch.randperm(len(split), device=device, generator=self.generator)
        seen = 0
        for i in range(0, len(split) - bs + 1, bs):
            index = order[i : i + bs]
            x = data.normalise(augment(split.images[index], data.bundle.augmentation, self.generator))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = split.labels[index]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
                s = self.student(x)
                with torch.no_grad():
                    t = self.teacher(x)
            s, t = s.float(), t.float()
            kd = F.kl_div(F.log_softmax(s / 4, 1), F.log_softmax(t / 4, 1), reduction="batchmean", log_target=True)
            loss = 0.1 * F.cross_entropy(s, y) + 0.9 * 16 * kd
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            seen += bs
        sync(device)
        return seen / (time.perf_counter() - start)


def kdhub_epoch(trainer: Trainer, epoch: int) -> float:
    """One training epoch through the engine (the epoch's one host sync included); returns images/s."""
    sync(trainer.device)
    start = time.perf_counter()
    trainer._train_epoch(epoch)
    sync(trainer.device)
    return trainer.data.size("train") / (time.perf_counter() - start)
