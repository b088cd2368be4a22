"""Export a packaged model to ONNX or TorchScript, with dynamic batch size and sequence length.

Both formats take the model's `inputs` (by default `seq` [B, L, F] int64, `seq_mask` [B, L] bool,
`item` [B, n] int64, `domain` [B, m] int64; `user` [B] int64 for models that use it) and return the raw
score [B]. The export file sits beside a small JSON sidecar holding the package version it came from. An
export written into its package (the default) is listed with its sidecar in the package manifest and
checksummed, and the package is re-published as one unit; `load_package` refuses an export whose checksum
or version does not match, and one that is present but unlisted, so a copied-in graph is never served.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Literal

import torch

from dacdr.fsutil import write_atomic
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
    name = EXPORT_FILES[fmt]
    out = Path(out) if out else pkg.path / name
    if fmt == "onnx":
        data = onnx_bytes(pkg.model)
    else:
        buf = io.BytesIO()
        torch.jit.save(torchscript_module(pkg.model), buf)
        data = buf.getvalue()
    sidecar = {"format": fmt, "package_version": pkg.version, "inputs": list(pkg.model.inputs),
               "dynamic_axes": _dynamic_axes(tuple(pkg.model.inputs), pkg.model.broadcasts_history)}
    side_bytes = json.dumps(sidecar, indent=1).encode()
    if out.resolve() == (pkg.path / name).resolve():
        from dacdr.package import add_to_package

        add_to_package(pkg.path, {name: data, name + ".json": side_bytes})
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, blob in ((out, data), (out.with_name(out.name + ".json"), side_bytes)):
        write_atomic(path, blob)
    return out


def exported_onnx_for(pkg) -> bytes | None:
    """The package's exported ONNX graph when its manifest lists one, read and checked against its sha256
    (a `PackageError` when it differs); None when the package has no export (the caller exports in memory)."""
    import hashlib

    from dacdr.package import MANIFEST, PackageError

    name = EXPORT_FILES["onnx"]
    digest = pkg.manifest["files"].get(name)
    if digest is None:
        return None
    try:
        data = (pkg.path / name).read_bytes()
    except OSError as e:
        raise PackageError(f"{name}: unreadable ({e.strerror})") from e
    if hashlib.sha256(data).hexdigest() != digest:  # re-checked here: the file is read after verification
        raise PackageError(f"{name}: sha256 differs from {MANIFEST} (file modified or corrupt)")
    return data
