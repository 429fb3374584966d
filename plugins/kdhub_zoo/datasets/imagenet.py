"""ImageNet-1K (ILSVRC-2012) in the layouts users have, streamed from disk."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

import kdhub

from ._files import TransformOptions, class_folders, existing_folder, folder_split, is_image, same_classes

ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz")
SYNSET_LISTS = ("LOC_synset_mapping.txt", "synset_words.txt", "synsets.txt", "words.txt")
"""Synset lists users keep beside the folders: ``n01440764 tench, Tinca tinca`` per line."""


def synset_names(root: Path, wnids: list[str]) -> list[str]:
    """Readable class names for the wnid folders: torchvision's meta.bin, then a synset list, else the wnids."""
    meta = root / "meta.bin"
    names: dict[str, str] = {}
    if meta.is_file():
        try:
            wnid_to_classes = torch.load(meta, map_location="cpu", weights_only=True)[0]
            names = {w: (c[0] if isinstance(c, (tuple, list)) else str(c)) for w, c in wnid_to_classes.items()}
        except Exception as err:  # torch.load raises many types for a damaged or hostile file
            from kdhub.contract.unpickling import unpickling_problem

            raise kdhub.KdhubError(
                f"imagenet: cannot read {meta} ({unpickling_problem(err)}); kdhub reads only tensors, dicts,"
                " lists and strings from it: remove it to name the classes by their wnids, or let torchvision write it"
            ) from None
    else:
        for candidate in SYNSET_LISTS:
            path = root / candidate
            if path.is_file():
                for line in path.read_text(errors="replace").splitlines():
                    wnid, _, words = line.strip().partition(" ")
                    if wnid and words:
                        names.setdefault(wnid, words.split(",")[0].strip())
                break
    return [names.get(w, w) for w in wnids]


class ImageNet(kdhub.Dataset):
    """ImageNet-1K (ILSVRC-2012, Russakovsky et al. 2015): 1.28M training and 50,000 validation images.

    Streamed from disk; the validation images are the test split (as every paper reports), and
    ``data.val_fraction`` holds a class-balanced part of the training images out for model selection
    and policies (TLLM uses 2 %). Layouts read from ``root``:

    - torchvision's ``ImageNet`` layout: ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG`` and
      ``meta.bin`` (class names). When only the three official archives (``ILSVRC2012_img_train.tar``,
      ``ILSVRC2012_img_val.tar``, ``ILSVRC2012_devkit_t12.tar.gz``) are there, torchvision unpacks them
      into that layout first (once; needs scipy and about 150 GB);
    - plain ``train/`` and ``val/`` class folders (e.g. sorted with the usual ``valprep.sh``), with
      class names from ``LOC_synset_mapping.txt`` or ``synset_words.txt`` when present, else the wnids.

    Any subset of classes works (ImageNet-100 ...); train and val must hold the same class folders.
    The standard preset (as mdistiller and torchvision's references): training RandomResizedCrop 224
    + flip, evaluation resize 256 + centre crop 224, ImageNet mean and std::

        data:
          name: imagenet
          options: {root: /data/imagenet}
          batch_size: 512
          val_fraction: 0.02
          workers: 16
    """

    name = "imagenet"

    class Options(TransformOptions):
        root: str = Field(
            min_length=1, max_length=4096, description="folder holding train/ and val/ (or the official archives)"
        )
        eval_folder: str = Field(
            "val", min_length=1, max_length=255, description="the folder of the test split inside root"
        )

    options: Options

    def load(self) -> kdhub.FileDataset:
        o = self.options
        who = self.name
        root = existing_folder(o.root, who)
        train_dir, test_dir = root / "train", root / o.eval_folder
        if not train_dir.is_dir() and all((root / a).is_file() for a in ARCHIVES):
            self._unpack(root)
        if not train_dir.is_dir():
            raise kdhub.KdhubError(
                f"{who}: {root} has no train/ folder (expected train/<wnid>/ and {o.eval_folder}/<wnid>/, "
                f"or the archives {', '.join(ARCHIVES)})"
            )
        existing_folder(test_dir, who, "evaluation folder")
        if any(is_image(p.name) for p in test_dir.iterdir() if p.is_file()):
            raise kdhub.KdhubError(
                f"{who}: {test_dir} holds images directly: sort them into <wnid>/ class folders "
                "(torchvision.datasets.ImageNet does it from the devkit archive, or the usual valprep.sh)"
            )
        wnids = class_folders(train_dir, who)
        same_classes(train_dir, wnids, test_dir, class_folders(test_dir, who), who)
        mean, std = o.statistics(who)
        return kdhub.FileDataset(
            train=folder_split(train_dir, wnids, who),
            test=folder_split(test_dir, wnids, who),
            num_classes=len(wnids),
            mean=mean,
            std=std,
            transforms=o.transforms(),
            class_names=synset_names(root, wnids),
            channels=o.channels,
            name=self.name,
            source=str(root.resolve()),
        )

    def _unpack(self, root: Path) -> None:
        from torchvision import datasets

        try:
            for split in ("train", "val"):
                datasets.ImageNet(str(root), split=split)
        except (RuntimeError, OSError, ImportError) as err:
            raise kdhub.KdhubError(f"imagenet: cannot unpack the archives in {root}: {err}") from None
