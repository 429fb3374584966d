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

from kdhub.errors import KdhubError

__all__ = [
    "FORMATS",
    "RTOL_ATOL",
    "add_parser",
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
CHECKPOINT_FORMAT = "kdhub-student-1"


# the student's spec and checkpoint ----------------------------------------------------------------


def student_spec(config: Any, data: Any) -> dict[str, Any]:
    """What rebuilding and feeding the student needs: model plugin and options, classes, input, normalisation."""
    from kdhub.plugins import get_registry

    options = get_registry().options("model", config.student.name, config.student.options, where="student.options")
    spec: dict[str, Any] = {
        "name": config.student.name,
        "options": options.model_dump(mode="json"),
        "num_classes": int(data.num_classes),
        "in_channels": int(data.in_channels),
        "image_size": int(data.image_size),
        "class_names": [str(c) for c in data.class_names],
        "dataset": config.data.name,
    }
    normalization = getattr(data, "normalization", None)  # DeviceData has it; other sources may not
    if normalization is not None:
        spec["normalization"] = normalization
    return spec


def _clean(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        k.removeprefix("module.").removeprefix("_orig_mod."): v.detach().cpu().contiguous() for k, v in state.items()
    }


def model_checkpoint(student: nn.Module, config: Any, data: Any) -> dict[str, Any]:
    """A kdhub checkpoint of the student alone (loads with ``torch.load(weights_only=True)``)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": _clean(student.state_dict()),
        "model_spec": student_spec(config, data),
        "epoch": int(config.epochs),
    }


def load_checkpoint(path: Path, label: str | None = None) -> dict[str, Any]:
    """A kdhub checkpoint (``model`` and ``model_spec``) read without executing pickled code."""
    from kdhub.engine.checkpoint import unpickling_problem

    label = label or str(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # never PyTorch's advice to load it with weights_only off
        raise KdhubError(
            f"{label}: not a loadable kdhub checkpoint ({unpickling_problem(err)}); kdhub reads tensors and plain"
            " values only: give a run id or a checkpoint kdhub wrote (a run's checkpoints/final.pt)"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or "model_spec" not in state:
        raise KdhubError(f"{label}: not a kdhub checkpoint (no 'model' and 'model_spec' entries)")
    problem = _spec_problem(state["model_spec"])
    if problem:
        raise KdhubError(f"{label}: not a kdhub checkpoint (its model_spec {problem})")
    return state


def _spec_problem(spec: Any) -> str | None:
    """What a checkpoint's ``model_spec`` lacks for rebuilding the network (None when it is complete)."""
    if not isinstance(spec, dict):
        return f"is a {type(spec).__name__}, not a dict"
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        return "names no model plugin ('name')"
    for key in ("num_classes", "in_channels", "image_size"):
        value = spec.get(key)
        present = key in spec or key == "num_classes"
        if present and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return f"has no valid {key!r} (an int >= 1, got {value!r:.40})"
    if not isinstance(spec.get("options", {}), dict):
        return "has options that are not a dict"
    return None


def build_network(spec: dict[str, Any], input_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """A fresh network from a model spec (the model plugin must be installed)."""
    from kdhub.plugins import get_registry

    if input_shape is None:
        if "in_channels" not in spec or "image_size" not in spec:
            raise KdhubError(
                "the checkpoint does not record its input shape (written by an older kdhub); give --input-shape C,H,W"
            )
        input_shape = (int(spec["in_channels"]), int(spec["image_size"]), int(spec["image_size"]))
    options = dict(spec.get("options") or {})
    # the checkpoint holds the weights: rebuilding the architecture must not download pretrained ones
    if options.get("pretrained"):
        options["pretrained"] = False
    if options.get("weights"):
        options["weights"] = None
    model: Any = get_registry().create("model", spec["name"], **options)
    return model.build(int(spec["num_classes"]), input_shape[0], input_shape[-1])


def network_from_checkpoint(
    checkpoint: dict[str, Any], label: str = "checkpoint", input_shape: tuple[int, int, int] | None = None
) -> nn.Module:
    """The checkpoint's network on the CPU in eval mode, its weights loaded."""
    net = build_network(checkpoint["model_spec"], input_shape)
    try:
        net.load_state_dict(_clean(checkpoint["model"]))
    except RuntimeError as err:
        first = "; ".join(line.strip() for line in str(err).splitlines()[1:3] if line.strip())[:300]
        raise KdhubError(f"{label}: the weights do not fit {checkpoint['model_spec']['name']} ({first})") from None
    return net.eval()


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
    from kdhub.tracking import resolve_weights

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


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``kdhub export SOURCE --format safetensors|onnx|torchscript [--out FILE]``."""
    p = subparsers.add_parser(
        "export",
        help="write a trained student as safetensors, ONNX or TorchScript (checked against PyTorch)",
        description="Export a student checkpoint; every format takes normalised float32 images [N, C, H, W].",
    )
    p.add_argument(
        "source", metavar="RUN_ID|PATH", help="run id, checkpoint file, runs:/<run>/<path> or models:/NAME/VERSION"
    )
    p.add_argument("--format", "-f", required=True, metavar="|".join(FORMATS), help="output format")
    p.add_argument("--out", "-o", metavar="FILE", help="output file (default: <run or file name><suffix>)")
    p.add_argument("--input-shape", metavar="C,H,W", help="input shape for checkpoints that do not record it")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.set_defaults(func=cmd_export)
    return p
