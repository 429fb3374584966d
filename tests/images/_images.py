"""Image files written at test time from the embedded digits (shared by the data tests and their fixtures)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
WNIDS = [f"n0{1000000 + 1111 * d}" for d in range(10)]


def digit_images(size: int = 16, rgb: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits as uint8 [N, C, size, size] (bilinear upscaling; RGB = a colour per class)."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.from_numpy(raw.images * (255.0 / 16.0)).float().unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(raw.target).long()
    if rgb:
        tint = torch.tensor([[1.0, 0.6, 0.3], [0.3, 1.0, 0.6], [0.6, 0.3, 1.0]])[labels % 3]
        images = images * tint[:, :, None, None]
    return images.round().clamp(0, 255).to(torch.uint8), labels


def write_image(path: Path, image: torch.Tensor) -> None:
    from torchvision.io import encode_jpeg, encode_png

    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode_png(image) if path.suffix == ".png" else encode_jpeg(image, quality=95)
    path.write_bytes(bytes(data.numpy()))


def write_folder(
    root: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    suffix: str | None = None,
    every: int = 1,
) -> list[Path]:
    """``root/<class>/<i>.<png|jpg>`` for every ``every``-th image (alternating PNG and JPEG unless ``suffix``)."""
    paths = []
    for i in range(0, len(labels), every):
        ext = suffix or (".png" if i % 2 else ".jpg")
        path = root / class_names[int(labels[i])] / f"{i:05d}{ext}"
        write_image(path, images[i])
        paths.append(path)
    return paths
