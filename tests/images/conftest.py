"""Image folders built at test time from the embedded digits: plain folders, an ImageNet and a CUB layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _images import DIGIT_NAMES, WNIDS, digit_images, write_folder, write_image


@pytest.fixture(scope="session")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits as grey 16x16 PNG/JPEG files: train/ (first 1,400) and val/ (the rest), class folders 0..9."""
    root = tmp_path_factory.mktemp("digit_folder")
    images, labels = digit_images(16)
    names = [str(d) for d in range(10)]
    write_folder(root / "train", images[:1400], labels[:1400], names)
    write_folder(root / "val", images[1400:], labels[1400:], names)
    return root


@pytest.fixture(scope="session")
def fake_imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's ImageNet layout (train/<wnid>, val/<wnid>, meta.bin) holding colour digits as 24x24 JPEGs."""
    root = tmp_path_factory.mktemp("imagenet")
    images, labels = digit_images(24, rgb=True)
    write_folder(root / "train", images[:1400], labels[:1400], WNIDS, ".JPEG", every=2)
    write_folder(root / "val", images[1400:], labels[1400:], WNIDS, ".JPEG")
    wnid_to_classes = {w: (DIGIT_NAMES[d], f"digit {d}") for d, w in enumerate(WNIDS)}
    torch.save((wnid_to_classes, [WNIDS[int(y)] for y in labels[1400:]]), root / "meta.bin")
    return root


@pytest.fixture(scope="session")
def fake_cub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CUB_200_2011 release layout (index files and images/) holding colour digits as 24x24 JPEGs."""
    parent = tmp_path_factory.mktemp("cub")
    root = parent / "CUB_200_2011"
    images, labels = digit_images(24, rgb=True)
    folders = [f"{d + 1:03d}.Digit_{DIGIT_NAMES[d]}" for d in range(10)]
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [], "classes.txt": []}
    for i in range(0, len(labels), 2):
        image_id = i // 2 + 1
        rel = f"{folders[int(labels[i])]}/Digit_{i:05d}.jpg"
        write_image(root / "images" / rel, images[i])
        lines["images.txt"].append(f"{image_id} {rel}")
        lines["image_class_labels.txt"].append(f"{image_id} {int(labels[i]) + 1}")
        lines["train_test_split.txt"].append(f"{image_id} {int(i < 1200)}")
    lines["classes.txt"] = [f"{d + 1} {folder}" for d, folder in enumerate(folders)]
    for name, content in lines.items():
        (root / name).write_text("\n".join(content) + "\n")
    return parent
