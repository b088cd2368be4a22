"""Export a packaged model to ONNX or TorchScript, with dynamic batch size and sequence length.

Both formats take the model's `inputs` (by default `seq` [B, L, F] int64, `seq_mask` [B, L] bool,
`item` [B, n] int64, `domain` [B, m] int64; `user` [B] int64 for models that use it) and return the raw
score [B]. The export file sits beside a small JSON sidecar holding the package version it came from, so
a stale export of an older package is detected instead of silently served.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Literal

import torch

from dacdr.models import RecModel

Format = Literal["onnx", "torchscript"]
EXPORT_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
ONNX_OPSET = 17


def example_inputs(model: RecModel, batch: int = 2, length: int = 3) -> dict[str, torch.Tensor]:
    """Small valid inputs for tracing; every index is 0 (padding), which every table holds."""
    spec = model.spec
    tensors = {
        "seq": torch.zeros(batch, length, len(spec.sequence_fields), dtype=torch.long),
        "seq_mask": torch.ones(batch, length, dtype=torch.bool),
        "item": torch.zeros(batch, len(spec.item_fields), dtype=torch.long),
        "domain": torch.zeros(batch, len(spec.domain_fields), dtype=torch.long),
        "user": torch.zeros(batch, dtype=torch.long),
    }
    unknown = [k for k in model.inputs if k not in tensors]
    if unknown:
        raise ValueError(f"model input(s) {unknown} are not exportable (known: {sorted(tensors)})")
    return {k: tensors[k] for k in model.inputs}


def _dynamic_axes(names: tuple[str, ...], broadcast: bool = False) -> dict[str, dict[int, str]]:
    """Dynamic axes; with `broadcast` the user-side inputs get their own batch axis, "users" (1 or "batch")."""
    users = "users" if broadcast else "batch"
    axes = {"seq": {0: users, 1: "length"}, "seq_mask": {0: users, 1: "length"}, "item": {0: "batch"},
            "domain": {0: users}, "user": {0: "batch"}}
    return {n: axes[n] for n in names} | {"score": {0: "batch"}}


def onnx_bytes(model: RecModel) -> bytes:
    """The model as an ONNX graph (TorchScript-based exporter: no extra dependency)."""
    model.eval()
    inputs = example_inputs(model)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter warns that it is legacy; it is the one that needs no onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, tuple(inputs.values()), buf, dynamo=False, input_names=list(inputs), output_names=["score"],
            dynamic_axes=_dynamic_axes(tuple(inputs), model.broadcasts_history), opset_version=ONNX_OPSET,
        )
    return buf.getvalue()


def torchscript_module(model: RecModel) -> torch.jit.ScriptModule:
    """The model traced to TorchScript; shapes are read from the inputs at run time, so B and L are free."""
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated, still the TorchScript path
        return torch.jit.trace(model, tuple(example_inputs(model).values()), check_trace=False)


def export_package(package_dir: str | Path, fmt: Format, out: str | Path | None = None) -> Path:
    """Export the package's model; default output `PACKAGE/model.onnx` or `PACKAGE/model.torchscript.pt`."""
    from dacdr.package import load_package

    if fmt not in EXPORT_FILES:
        raise ValueError(f"--format must be one of {sorted(EXPORT_FILES)}, got {fmt!r}")
    pkg = load_package(package_dir)
    out = Path(out) if out else pkg.path / EXPORT_FILES[fmt]
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        out.write_bytes(onnx_bytes(pkg.model))
    else:
        torchscript_module(pkg.model).save(str(out))
    sidecar = {"format": fmt, "package_version": pkg.version, "inputs": list(pkg.model.inputs),
               "dynamic_axes": _dynamic_axes(tuple(pkg.model.inputs), pkg.model.broadcasts_history)}
    out.with_name(out.name + ".json").write_text(json.dumps(sidecar, indent=1))
    return out


def exported_onnx_for(pkg) -> bytes | None:
    """The package's exported ONNX file if present and made from this very package version, else None."""
    path = pkg.path / EXPORT_FILES["onnx"]
    side = path.with_name(path.name + ".json")
    if not (path.is_file() and side.is_file()):
        return None
    try:
        if json.loads(side.read_text()).get("package_version") != pkg.version:
            return None
    except json.JSONDecodeError:
        return None
    return path.read_bytes()
