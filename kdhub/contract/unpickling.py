"""What ``torch.load(weights_only=True)`` refused, in kdhub's words.

Every reader of a file kdhub did not write (teacher weights, checkpoints, ``kdhub export``/``evaluate``,
dataset metadata) reports a refusal through :func:`unpickling_problem`: the pickled objects the file holds,
or that it is damaged, and never PyTorch's advice to load it again with ``weights_only`` off.
"""

from __future__ import annotations

import re

__all__ = ["unpickling_problem"]


def unpickling_problem(err: Exception) -> str:
    """The informative part of ``torch.load``'s error: the pickled objects a file holds, or that it is damaged."""
    text = str(err)
    found = re.search(r"(?:GLOBAL|Unsupported globals:) ([\w.]+)", text)
    if found:
        return f"refused: it holds pickled objects ({found.group(1).rstrip('.')}), which could run code when loaded"
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    lines = text.strip().splitlines()
    detail = found.group(1).split("Check the documentation")[0].strip() if found else (lines[0] if lines else "")
    if "weights_only" in detail or "Weights only load failed" in detail:  # PyTorch's advice to run the file
        detail = "it holds objects other than tensors, which kdhub does not unpickle"
    return f"not a PyTorch checkpoint, or truncated or corrupt ({type(err).__name__}: {detail[:160]})"
