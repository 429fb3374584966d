"""Shared loading of torchvision's image datasets into uint8 tensors."""

from __future__ import annotations

import numpy as np
import torch

import kdhub


def check_root(root: str) -> None:
    """A dataset root must be a folder (or not exist yet): one clear line otherwise."""
    from pathlib import Path

    path = Path(root)
    try:
        if path.exists() and not path.is_dir():
            raise kdhub.ConfigError(f"options.root: {root} is a file, not a folder (give the folder of the dataset)")
    except OSError as err:
        raise kdhub.ConfigError(f"options.root: cannot use {root[:200]}: {err.strerror or err}") from None


def to_split(data: object, targets: object) -> kdhub.TensorSplit:
    """torchvision's ``data`` (N,H,W[,C] uint8 array or tensor) and ``targets`` as a TensorSplit."""
    images = torch.as_tensor(np.asarray(data))
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return kdhub.TensorSplit(images.contiguous(), torch.as_tensor(np.asarray(targets)).long())
