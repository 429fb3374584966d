"""The streaming data path: decode + augment throughput, and training speed against the in-memory path.

1. ``decode``: images/s of the streaming loader alone (``torchvision.io`` decode + the ``imagenet``
   preset: RandomResizedCrop 224 + flip, uint8 batches handed to the main process, before the
   normalisation that the device does) over a folder of
   224x224 JPEGs, for each worker count, as wall-clock images/s and as images per CPU-second of
   the loading processes (workers and main process): the per-core rate, which holds on a shared
   machine where wall-clock rates depend on the other load.
2. ``train``: training images/s of one model on the same images, once streamed from JPEG files
   (``image_folder``, preset ``cifar``: pad-4 crop + flip; with 0 and 1 workers) and once held in
   memory as uint8 tensors (``DeviceData``, the same pad-4 crop + flip on the device), each built by
   the engine's ``Trainer``; training steps alternate between the variants one by one, so the load
   of a shared machine affects all alike; the ratio is streaming / in-memory, the median over the
   repeats of the ratio within each repeat.

The images are written at start (Fashion-MNIST from Debian's package when installed, else the
embedded digits, upscaled, tinted and with noise so the JPEGs are photo-sized, about 25 KB at 224).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_throughput.py
    .venv/bin/python benchmarks/data_throughput.py --only train --model torchvision:resnet18 --size 64 --workers 0,1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import kdhub
from kdhub.contract.config_loading import parse_config
from kdhub.engine.loop import Trainer, pick_device
from kdhub.engine.stream import LoaderOptions, StreamData, sample_seed
from kdhub.registry import loading as plugins

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def source_images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` grey images (uint8 [N, 1, H, W]) with labels: Fashion-MNIST when installed, else digits."""
    if FASHION.is_file():
        import gzip

        import numpy as np

        with gzip.open(FASHION) as f:
            raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:count]
        with gzip.open(FASHION.with_name("train-labels-idx1-ubyte.gz")) as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8)[:count]
        return torch.from_numpy(raw.copy()), torch.from_numpy(labels.astype("int64"))
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images * (255 / 16)).to(torch.uint8).unsqueeze(1)
    index = torch.arange(count) % len(images)
    return images[index], torch.from_numpy(digits.target)[index].long()


def write_folder(root: Path, images: torch.Tensor, labels: torch.Tensor, size: int, seed: int = 0) -> float:
    """Colour JPEGs (quality 90) of ``size`` x ``size`` in ``root/train/<class>`` and ``root/val/<class>``; mean KB."""
    from torchvision.io import encode_jpeg

    gen = torch.Generator().manual_seed(seed)
    total = 0
    for i in range(len(labels)):
        grey = F.interpolate(images[i : i + 1].float(), size=(size, size), mode="bicubic", align_corners=False)[0]
        tint = torch.rand(3, 1, 1, generator=gen) * 0.6 + 0.4
        noise = torch.randn(3, size, size, generator=gen) * 12
        rgb = (grey * tint + noise + 20).clamp(0, 255).to(torch.uint8)
        split = "val" if i % 10 == 0 else "train"
        path = root / split / f"c{int(labels[i])}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = bytes(encode_jpeg(rgb, quality=90).numpy())
        path.write_bytes(data)
        total += len(data)
    return total / len(labels) / 1024


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (Linux /proc), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def uint8_batches(data: StreamData, batch: int, epoch: int) -> Any:
    """One epoch of the loader's uint8 batches as they reach the main process (before the device's normalisation)."""
    view = data.views["train"]
    order = torch.randperm(len(view.index), generator=torch.Generator().manual_seed(epoch)).tolist()
    batches = [
        [(p, view.source, int(view.index[p]), sample_seed(0, epoch, p)) for p in order[i : i + batch]]
        for i in range(0, len(order), batch)
    ]
    data.plan.set(lambda: iter(batches), len(batches))
    return data.loader()


def decode_throughput(root: Path, workers: int, batch: int, repeats: int) -> tuple[float, float]:
    """(images/s, images per CPU-second of the loading processes): one warm-up epoch, median of the repeats.

    The CPU time counts the workers and the main process (which receives the batches), so the
    per-core figure holds on a machine shared with other work, where wall-clock rates do not.
    """
    bundle = kdhub.create("dataset", "image_folder", root=str(root)).load()
    data = StreamData(bundle, torch.device("cpu"), 0.0, 0, loader=LoaderOptions(workers=workers, prefetch=4))
    rates, per_cpu = [], []
    for r in range(repeats + 1):
        pids = [w.pid for w in data.loader()._iterator._workers] if r and workers else []
        cpu0, start = time.process_time() + cpu_seconds(pids), time.perf_counter()
        n = sum(len(raw["index"]) for raw in uint8_batches(data, batch, epoch=r + 1))
        wall, cpu = time.perf_counter() - start, time.process_time() + cpu_seconds(pids) - cpu0
        if r:
            rates.append(n / wall)
            per_cpu.append(n / cpu)
    return statistics.median(rates), statistics.median(per_cpu)


class _InMemory:
    """A dataset plugin holding the decoded images of the same folder as uint8 tensors (the in-memory path)."""

    def __init__(self, root: Path, size: int) -> None:
        self.root, self.size = root, size

    @kdhub.hookimpl
    def kdhub_register_datasets(self, register):
        root = self.root

        class FolderInMemory(kdhub.Dataset):
            """The benchmark's folder decoded into memory."""

            name = "bench_in_memory"

            def load(self) -> kdhub.DataBundle:
                from torchvision.io import ImageReadMode, decode_image, read_file

                files = kdhub.create("dataset", "image_folder", root=str(root)).load()

                def split(s: kdhub.FileSplit) -> kdhub.TensorSplit:
                    images = [decode_image(read_file(os.path.join(s.root, f)), ImageReadMode.RGB) for f in s.files]
                    return kdhub.TensorSplit(torch.stack(images), s.labels)

                return kdhub.DataBundle(
                    split(files.train),
                    split(files.test),
                    files.num_classes,
                    files.mean,
                    files.std,
                    kdhub.Augmentation(crop_padding=4, horizontal_flip=True),
                    files.class_names,
                )

        register(FolderInMemory)


def train_config(args: argparse.Namespace, root: Path, streamed: bool, workers: int) -> dict:
    options = {"root": str(root), "augment": "cifar", "image_size": args.size, "crop_padding": 4}
    data = {"name": "image_folder", "options": options} if streamed else {"name": "bench_in_memory"}
    return {
        "seed": 0,
        "epochs": 100,
        "data": {**data, "batch_size": args.batch, "workers": workers, "drop_last": True},
        "student": args.model,
        "metrics": [],
        "train": {"progress": False, "device": args.device},
    }


class Stepper:
    """Training steps of one trainer (its data path, model and optimizer), timed one at a time.

    A step is what the engine's loop does for a plain run: take the next batch from the data source
    (for streamed data: wait for the worker, copy, normalise), forward, cross-entropy, backward and
    the optimizer step; epochs follow each other as the source runs out.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer, self.batches, self.seconds, self.images = trainer, iter(()), 0.0, 0

    def step(self) -> None:
        trainer = self.trainer
        start = time.perf_counter()
        try:
            x, y, _ = next(self.batches)
        except StopIteration:
            self.batches = trainer.data.train_batches(trainer.batch_size, drop_last=True)
            x, y, _ = next(self.batches)
        logits = trainer._forward(x, False)[0]
        loss = F.cross_entropy(logits, y)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        self.images += len(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["decode", "train"], help="run one part")
    parser.add_argument("--images", type=int, default=1024, help="224x224 JPEGs for the decode part")
    parser.add_argument("--decode-workers", default="0,1,2", help="worker counts of the decode part")
    parser.add_argument("--train-images", type=int, default=704, help="images for the training part")
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--size", type=int, default=64, help="image size of the training part")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", default="0,1", help="streaming worker counts compared in the training part")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="training steps per variant and repeat")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    result: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible",
        "torch_threads": torch.get_num_threads(),
        "kdhub_version": kdhub.__version__,
    }
    with tempfile.TemporaryDirectory(prefix="kdhub-bench-") as tmp:
        if args.only in (None, "decode"):
            root = Path(tmp) / "jpeg224"
            images, labels = source_images(args.images)
            result["decode_jpeg_kb"] = round(write_folder(root, images, labels, 224), 1)
            rows = []
            for workers in [int(w) for w in args.decode_workers.split(",")]:
                rate, per_cpu = decode_throughput(root, workers, args.batch, args.repeats)
                rows.append({"workers": workers, "images_per_s": round(rate), "per_cpu_second": round(per_cpu)})
            result["decode_224"] = rows
        if args.only in (None, "train"):
            root = Path(tmp) / f"jpeg{args.size}"
            images, labels = source_images(args.train_images)
            write_folder(root, images, labels, args.size)
            plugins.register_module(_InMemory(root, args.size), name="bench_in_memory")
            trainers = {"in_memory": Trainer(parse_config(train_config(args, root, False, 0)))}
            for w in [int(w) for w in args.workers.split(",")]:
                trainers[f"stream_w{w}"] = Trainer(parse_config(train_config(args, root, True, w)))
            for trainer in trainers.values():  # same initial weights everywhere: the same work per step
                trainer.student.load_state_dict(trainers["in_memory"].student.state_dict())
            steppers = {name: Stepper(trainer) for name, trainer in trainers.items()}
            for _ in range(2):  # warm-up (and worker start-up), not timed
                for s in steppers.values():
                    s.step()
                    s.seconds, s.images = 0.0, 0
            # steps alternate between the variants, so load from other processes hits all of them alike
            rates: dict[str, list[float]] = {k: [] for k in steppers}
            for _ in range(args.repeats):
                for s in steppers.values():
                    s.seconds, s.images = 0.0, 0
                for _ in range(args.steps):
                    for s in steppers.values():
                        s.step()
                for name, s in steppers.items():
                    rates[name].append(s.images / s.seconds)
            medians = {k: statistics.median(v) for k, v in rates.items()}
            result["train"] = {
                "model": args.model,
                "size": args.size,
                "batch": args.batch,
                "device": str(pick_device(args.device)),
                "steps_per_repeat": args.steps,
                "images_per_s": {k: round(v, 1) for k, v in medians.items()},
                "repeats": {k: [round(x, 1) for x in v] for k, v in rates.items()},
                # paired: each repeat's streaming rate over the in-memory rate measured alongside it
                "ratio_to_in_memory": {
                    k: round(statistics.median(a / b for a, b in zip(v, rates["in_memory"], strict=True)), 3)
                    for k, v in rates.items()
                    if k != "in_memory"
                },
            }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
