"""Feature taps: forward hooks on named modules, collected by role."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from kdhub.contract.errors import IncompatibleError
from kdhub.engine.heads import eval_logits

__all__ = ["FeatureTaps", "check_roles", "dry_run_shapes"]


class FeatureTaps:
    """Records the outputs (or inputs, for ``"name:input"``) of named modules for chosen roles.

    Tensors are kept as produced (no copy); ``collect()`` hands them out and forgets them.
    """

    def __init__(self, net: nn.Module, taps: dict[str, list[str]], roles: Iterable[str]) -> None:
        self.roles = list(dict.fromkeys(roles))
        self._store: dict[str, list[Tensor | None]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        modules = dict(net.named_modules())
        for role in self.roles:
            names = taps.get(role)
            if names is None:
                raise IncompatibleError(f"no taps for feature role {role!r}")
            self._store[role] = [None] * len(names)
            for position, spec in enumerate(names):
                module_name, _, which = spec.partition(":")
                module = modules.get(module_name)
                if module is None:
                    raise IncompatibleError(f"feature tap {spec!r} names no module of {type(net).__name__}")
                self._handles.append(self._hook(module, role, position, which == "input"))

    def _hook(self, module: nn.Module, role: str, position: int, on_input: bool) -> torch.utils.hooks.RemovableHandle:
        store = self._store

        if on_input:

            def pre_hook(_m: nn.Module, args: tuple) -> None:
                store[role][position] = args[0]

            return module.register_forward_pre_hook(pre_hook)

        def hook(_m: nn.Module, _args: tuple, output: Tensor) -> None:
            store[role][position] = output

        return module.register_forward_hook(hook)

    def collect(self) -> dict[str, list[Tensor]]:
        """The features recorded since the last call, by role (every tapped module ran in the forward)."""
        out: dict[str, list[Tensor]] = {}
        for role, values in self._store.items():
            out[role] = [v for v in values if v is not None]
            values[:] = [None] * len(values)
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def check_roles(who: str, model_name: str, taps: dict[str, list[str]], roles: Iterable[str], side: str) -> None:
    """Raise a clear config-time error when a plugin needs feature roles a model does not name."""
    missing = [r for r in roles if r not in taps]
    if missing:
        have = ", ".join(sorted(taps)) or "none"
        raise IncompatibleError(
            f"{who} needs {', '.join(repr(m) for m in missing)} features, which {side} model {model_name!r} "
            f"does not provide (it provides: {have})"
        )


@torch.no_grad()
def dry_run_shapes(
    net: nn.Module, taps: dict[str, list[str]], example: Tensor
) -> tuple[dict[str, list[tuple[int, ...]]], tuple[int, ...]]:
    """Per-sample shapes of every tapped role and of the logits, from one eval-mode forward."""
    was_training = net.training
    net.eval()
    try:
        with FeatureTaps(net, taps, taps.keys()) as recorder:
            logits = eval_logits(net(example))
            feats = recorder.collect()
    finally:
        net.train(was_training)
    shapes = {role: [tuple(t.shape[1:]) for t in tensors] for role, tensors in feats.items()}
    return shapes, tuple(logits.shape[1:])
