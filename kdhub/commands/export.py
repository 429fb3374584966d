"""``kdhub export``: a trained student as safetensors, ONNX or TorchScript, checked against PyTorch.

The student is rebuilt from its kdhub checkpoint (``model_spec``: model plugin, options, classes,
input shape, normalisation) and loaded with ``torch.load(weights_only=True)``. Every format takes the
network's own input, float32 images ``[N, C, H, W]`` normalised as in training
(``(pixel / 255 - mean) / std`` per channel, the numbers are stored with the export), and returns
logits ``[N, num_classes]``; the batch dimension is free.

- ``safetensors``: the state_dict plus the model spec in the file's metadata (rebuild the network
  with kdhub's model plugin, or ``kdhub evaluate`` it); reloaded and compared exactly.
- ``onnx``: torch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``, built on
  ``torch.export`` like the MLflow model's pt2; the TorchScript-based exporter is deprecated), opset
  18, the spec in the model's metadata; checked with onnxruntime (or onnx's reference evaluator)
  against PyTorch on a batch of another size: ``|onnx - torch| <= 1e-4 + 1e-4 * |torch|``.
- ``torchscript``: ``torch.jit.trace`` with the spec as an extra file; checked the same way.

The checkpoint comes from a file, ``runs:/<run>/<path>``, ``models:/NAME/VERSION`` (or ``@alias``)
or a bare run id (its ``checkpoints/final.pt``, else the checkpoint inside its logged model).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdhub.contract.errors import KdhubError
from kdhub.registry.student import (
    CHECKPOINT_FORMAT,
    _clean,
    build_network,
    load_checkpoint,
    model_checkpoint,
    network_from_checkpoint,
    student_spec,
)
from kdhub.tracking import resolve_weights

__all__ = [
    "FORMATS",
    "RTOL_ATOL",
    "add_arguments",
    "build_network",
    "export",
    "load_checkpoint",
    "model_checkpoint",
    "network_from_checkpoint",
    "student_spec",
]

FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".torchscript.pt"}
RTOL_ATOL = (1e-4, 1e-4)
"""Tolerance of the ONNX and TorchScript checks: ``|export - torch| <= atol + rtol * |torch|`` on logits."""


# formats ------------------------------------------------------------------------------------------


def _metadata(spec: dict[str, Any]) -> dict[str, str]:
    return {"format": CHECKPOINT_FORMAT, "kdhub_model_spec": json.dumps(spec)}


def _check(reference: torch.Tensor, got: Any, fmt: str) -> float:
    got = torch.as_tensor(got, dtype=torch.float32)
    if got.shape != reference.shape:
        raise KdhubError(f"{fmt} export: logits of shape {tuple(got.shape)}, PyTorch gives {tuple(reference.shape)}")
    diff = float((got - reference).abs().max())
    rtol, atol = RTOL_ATOL
    if not torch.allclose(got, reference, rtol=rtol, atol=atol):
        raise KdhubError(f"{fmt} export: logits differ from PyTorch's by up to {diff:.3g} (tolerance {atol:g})")
    return diff


def _export_safetensors(net: nn.Module, spec: dict[str, Any], out: Path, probe: torch.Tensor) -> float:
    from safetensors.torch import load_file, save_file

    state = _clean(net.state_dict())
    save_file(state, str(out), metadata=_metadata(spec))
    again = build_network(spec, tuple(probe.shape[1:])).eval()  # type: ignore[arg-type]
    again.load_state_dict(load_file(str(out)))
    with torch.no_grad():
        diff = float((again(probe) - net(probe)).abs().max())
    if diff != 0:
        raise KdhubError(f"safetensors export: the reloaded network differs by {diff:.3g}")
    return diff


def _export_onnx(net: nn.Module, spec: dict[str, Any], out: Path, probe: torch.Tensor) -> float:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it)
    except ImportError as err:
        raise KdhubError(
            f"onnx export needs onnx and onnxscript ({err.name} is missing): pip install 'kdhub[export]'"
        ) from None
    example = probe[:2]
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    # the exporter prints progress lines: keep them off the command's output
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                net,
                (example,),
                dynamo=True,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                opset_version=18,
                verbose=False,
            )
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise KdhubError(f"onnx export of {spec['name']} failed: {first[:300]}") from None
        if program is None:
            raise KdhubError(f"onnx export of {spec['name']} returned no program")
        program.save(str(out))
    model = onnx.load(str(out))
    for key, value in {**_metadata(spec), "input": "images float32 [N, C, H, W], normalised as in training"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(out))
    with torch.no_grad():
        reference = net(probe)
    return _check(reference, _run_onnx(out, probe.numpy()), "onnx")


def _run_onnx(path: Path, inputs: Any) -> Any:
    try:
        import onnxruntime
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        outputs: Any = ReferenceEvaluator(str(path)).run(None, {"images": inputs})
        return outputs[0]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": inputs})[0]


def _export_torchscript(net: nn.Module, spec: dict[str, Any], out: Path, probe: torch.Tensor) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(net, probe[:2], check_trace=False)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise KdhubError(f"torchscript export of {spec['name']} failed: {first[:300]}") from None
        torch.jit.save(traced, str(out), _extra_files={"kdhub_model_spec.json": json.dumps(spec)})
        loaded = torch.jit.load(str(out), map_location="cpu")
    with torch.no_grad():
        return _check(net(probe), loaded(probe), "torchscript")


def export(
    checkpoint: dict[str, Any],
    fmt: str,
    out: Path,
    input_shape: tuple[int, int, int] | None = None,
    label: str = "checkpoint",
) -> dict[str, Any]:
    """Write the checkpoint's network as ``fmt`` to ``out`` and check it; returns what was done."""
    if fmt not in FORMATS:
        raise KdhubError(f"--format: unknown format {fmt!r} (choose {', '.join(FORMATS)})")
    spec = dict(checkpoint["model_spec"])
    if input_shape is None:
        if "in_channels" not in spec or "image_size" not in spec:
            raise KdhubError(f"{label}: the checkpoint does not record its input shape; give --input-shape C,H,W")
        input_shape = (int(spec["in_channels"]), int(spec["image_size"]), int(spec["image_size"]))
    shape = input_shape
    net = network_from_checkpoint(checkpoint, label, shape)
    spec.setdefault("in_channels", shape[0])
    spec.setdefault("image_size", shape[-1])
    probe = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = {"safetensors": _export_safetensors, "onnx": _export_onnx, "torchscript": _export_torchscript}[fmt]
    try:
        diff = writer(net, spec, out, probe)
    except BaseException:
        out.unlink(missing_ok=True)  # never leave an export that failed its check behind
        raise
    return {
        "path": out,
        "format": fmt,
        "parameters": sum(p.numel() for p in net.parameters()),
        "input_shape": shape,
        "max_abs_diff": diff,
        "spec": spec,
    }


# command line -------------------------------------------------------------------------------------


def parse_shape(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise KdhubError(f"--input-shape: expected C,H,W (three positive integers), got {text!r}")
    return (values[0], values[1], values[2])


def _numbers(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def cmd_export(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:
        raise KdhubError(f"--format: unknown format {args.format!r} (choose {', '.join(FORMATS)})")
    shape = parse_shape(args.input_shape)
    with tempfile.TemporaryDirectory(prefix="kdhub-") as folder:
        path, label = resolve_weights(args.source, args.tracking_uri, Path(folder))
        checkpoint = load_checkpoint(path, args.source)
    out = Path(args.out) if args.out else Path(f"{label}{FORMATS[args.format]}")
    if out.is_dir():
        raise KdhubError(f"--out: {out} is a folder; give a file name")
    done = export(checkpoint, args.format, out, shape, args.source)
    spec = done["spec"]
    c, h, w = done["input_shape"]
    norm = spec.get("normalization")
    how = f"(pixel / 255 - mean {_numbers(norm['mean'])}) / std {_numbers(norm['std'])}" if norm else "as in training"
    print(f"wrote {out} ({args.format}, {spec['name']}, {done['parameters']:,} parameters)")
    print(f"input: float32 [N, {c}, {h}, {w}] normalised {how}; output: logits [N, {spec['num_classes']}]")
    if args.format == "safetensors":
        print("check: reloaded into a fresh network, identical logits")
    else:
        rtol, atol = RTOL_ATOL
        print(
            f"check: max |logits - PyTorch| = {done['max_abs_diff']:.3g} on a batch of 3"
            f" (tolerance {atol:g} + {rtol:g} * |logits|)"
        )
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``kdhub export SOURCE --format safetensors|onnx|torchscript [--out FILE]``."""
    p.add_argument(
        "source", metavar="RUN_ID|PATH", help="run id, checkpoint file, runs:/<run>/<path> or models:/NAME/VERSION"
    )
    p.add_argument("--format", "-f", required=True, metavar="|".join(FORMATS), help="output format")
    p.add_argument("--out", "-o", metavar="FILE", help="output file (default: <run or file name><suffix>)")
    p.add_argument("--input-shape", metavar="C,H,W", help="input shape for checkpoints that do not record it")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
