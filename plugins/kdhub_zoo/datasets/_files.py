"""What the streamed image datasets share: transform options, folder scanning and clear layout errors."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

import kdhub

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif")
"""What ``torchvision.io.decode_image`` reads (compared case-insensitively)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TransformOptions(kdhub.Options):
    """Options every streamed image dataset shares: the augmentation preset, its sizes and the statistics."""

    augment: Literal["imagenet", "cifar", "resize"] = Field(
        "imagenet",
        description="transforms.v2 preset: imagenet (RandomResizedCrop + flip; eval resize + centre crop), "
        "cifar (padded random crop + flip), resize (resize + centre crop only)",
    )
    image_size: int = Field(224, ge=8, le=2048, description="model input height and width (crop size)")
    resize_size: int = Field(256, ge=8, le=4096, description="imagenet preset: shorter side before the centre crop")
    crop_padding: int = Field(4, ge=0, le=64, description="cifar preset: random-crop padding")
    horizontal_flip: bool = Field(True, description="random horizontal flips in training")
    min_scale: float = Field(0.08, gt=0, le=1, description="imagenet preset: smallest crop area fraction")
    brightness: float = Field(0.0, ge=0, le=1, description="training brightness jitter factor (0 = none)")
    interpolation: Literal["bilinear", "bicubic"] = Field("bilinear", description="resize interpolation")
    rand_augment: int = Field(
        0, ge=0, le=10, description="RandAugment magnitude on timm's 0..10 scale, 2 ops per image (0 = none)"
    )
    channels: Literal[1, 3] = Field(3, description="3 = RGB, 1 = grey (every image is converted on decoding)")
    mean: tuple[float, ...] | None = Field(
        None, description="per-channel normalisation mean (None = ImageNet's, or their average for grey)"
    )
    std: tuple[float, ...] | None = Field(None, description="per-channel normalisation std (None = ImageNet's)")

    def transforms(self) -> kdhub.ImageTransforms:
        return kdhub.ImageTransforms(
            preset=self.augment,
            size=self.image_size,
            resize=self.resize_size,
            padding=self.crop_padding,
            flip=self.horizontal_flip,
            scale=(self.min_scale, 1.0),
            brightness=self.brightness,
            interpolation=self.interpolation,
            rand_augment=self.rand_augment,
        )

    def statistics(self, who: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        grey = self.channels == 1
        mean = self.mean or ((sum(IMAGENET_MEAN) / 3,) if grey else IMAGENET_MEAN)
        std = self.std or ((sum(IMAGENET_STD) / 3,) if grey else IMAGENET_STD)
        if len(mean) != self.channels or len(std) != self.channels:
            raise kdhub.ConfigError(f"{who}: options.mean and options.std need {self.channels} values (channels)")
        return tuple(mean), tuple(std)


def existing_folder(path: str | os.PathLike[str], who: str, what: str = "root") -> Path:
    """``path`` as a folder, or one clear error: missing, or a file."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise kdhub.KdhubError(f"{who}: {what} {folder} does not exist")
    if not folder.is_dir():
        raise kdhub.KdhubError(f"{who}: {what} {folder} is a file, not a folder")
    return folder


def is_image(name: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> bool:
    return name.lower().endswith(extensions) and not name.startswith(".")


def _is_folder(entry: os.DirEntry[str], who: str) -> bool:
    """Whether a folder entry is a folder (through a symlink too); a symlink that loops is one line naming it."""
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError as err:
        raise kdhub.KdhubError(
            f"{who}: {entry.path} is a symlink that cannot be followed ({err.strerror}: it links to itself"
            " or round a loop); remove it or point it at a folder"
        ) from None


def class_folders(folder: Path, who: str) -> list[str]:
    """Sorted names of the class folders inside ``folder`` (hidden ones ignored); none is an error."""
    names = sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and _is_folder(e, who))
    if not names:
        loose = any(is_image(e.name) for e in os.scandir(folder) if e.is_file())
        hint = " (it holds images directly: put each class in its own folder)" if loose else ""
        raise kdhub.KdhubError(f"{who}: {folder} holds no class folders{hint}")
    return names


def images_in(folder: Path, who: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[str]:
    """Image files under ``folder`` (recursively), relative to it and sorted; an empty folder is an error."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = _followed(Path(dirpath), sorted(d for d in dirnames if not d.startswith(".")), folder, who)
        rel = os.path.relpath(dirpath, folder)
        found += [os.path.normpath(os.path.join(rel, f)) for f in filenames if is_image(f, extensions)]
    if not found:
        raise kdhub.KdhubError(
            f"{who}: class folder {folder} holds no images ({', '.join(extensions)}); remove it or add images"
        )
    return sorted(found)


def _followed(here: Path, names: list[str], top: Path, who: str) -> list[str]:
    """The subfolders of ``here`` to walk into: a symlink back to a folder the walk is inside (a loop) is one
    line naming it; one to a folder outside the dataset is followed with a warning."""
    real_here = os.path.realpath(here)
    bounds = [os.path.realpath(top.parent), os.path.realpath(top)]
    kept = []
    for name in names:
        path = here / name
        if not path.is_symlink():
            kept.append(name)
            continue
        try:
            target = os.path.realpath(path, strict=True)
        except OSError as err:
            raise kdhub.KdhubError(
                f"{who}: {path} is a symlink that cannot be followed ({err.strerror}); remove it"
            ) from None
        if real_here == target or real_here.startswith(target.rstrip(os.sep) + os.sep):
            raise kdhub.KdhubError(
                f"{who}: {path} links back to {target}, a folder it is inside (a symlink loop: its images would"
                " be read again and again); remove the link"
            )
        if not any(target == b or target.startswith(b.rstrip(os.sep) + os.sep) for b in bounds):
            warnings.warn(
                f"{who}: {path} links outside the dataset's folder, to {target}; its images are used", stacklevel=2
            )
        kept.append(name)
    return kept


def folder_split(
    folder: Path, classes: list[str], who: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS
) -> kdhub.FileSplit:
    """The images of ``folder/<class>/...`` as a FileSplit (paths relative to ``folder``; label = class position)."""
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = images_in(folder / name, who, extensions)
        files += [os.path.join(name, f) for f in found]
        labels += [label] * len(found)
    return kdhub.FileSplit(torch.tensor(labels, dtype=torch.long), files=files, root=str(folder))


def same_classes(train: Path, train_classes: list[str], test: Path, test_classes: list[str], who: str) -> None:
    """Train and evaluation folders must name the same classes (labels are positions in the sorted list)."""
    if train_classes == test_classes:
        return
    only_train = sorted(set(train_classes) - set(test_classes))
    only_test = sorted(set(test_classes) - set(train_classes))

    def some(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" … ({len(names)} in all)" if len(names) > 5 else "") if names else "none"

    raise kdhub.KdhubError(
        f"{who}: the class folders of {train} and {test} differ (only in {train.name}: {some(only_train)}; "
        f"only in {test.name}: {some(only_test)})"
    )


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held) indices: each class gives round(fraction * N_m) samples (at least one kept per class)."""
    gen = torch.Generator().manual_seed(seed)
    held = []
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().squeeze(1)
        take = min(int(fraction * len(members) + 0.5), len(members) - 1)
        held.append(members[torch.randperm(len(members), generator=gen)[:take]])
    held_out = torch.cat(held).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_out] = False
    return keep.nonzero().squeeze(1), held_out


def subset(split: kdhub.FileSplit, index: torch.Tensor) -> kdhub.FileSplit:
    files = split.files
    assert files is not None
    return kdhub.FileSplit(split.labels[index], files=[files[i] for i in index.tolist()], root=split.root)
