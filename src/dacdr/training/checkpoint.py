"""Saving and loading models without executing code: safetensors weights plus a JSON description."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dacdr.data.features import FeatureSpec
from dacdr.fsutil import (
    atomic_dir,
    atomic_file,
    fault_point,
    recover_dir,
    remove_stale_temps,
    sha256_file,
    write_atomic,
)
from dacdr.models import RecModel, create_model, get_entry

MODEL_FORMAT = 1
WEIGHTS = "model.safetensors"
DESCRIPTION = "model.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not match its description."""


def model_description(name: str, model: RecModel) -> dict[str, Any]:
    fixed = get_entry(name).fixed
    params = {k: v for k, v in model.params.items() if k not in fixed}
    return {"format": MODEL_FORMAT, "name": name, "params": params, "feature_spec": model.spec.model_dump()}


def save_model(model: RecModel, name: str, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` and `model.json` into `directory` (each atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_file(directory / WEIGHTS) as tmp:
        # One metadata key: safetensors writes metadata in hash-map order, which differs between processes, and
        # a package's version is named after the digest of this file.
        save_file(tensors, str(tmp), metadata={"dacdr": json.dumps({"format": MODEL_FORMAT, "name": name})})
    write_atomic(directory / DESCRIPTION, json.dumps(model_description(name, model) | (extra or {}), indent=1))
    return directory


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header, without reading the data."""
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118  (not a dict)


def load_model(directory: str | Path) -> tuple[RecModel, dict[str, Any]]:
    """Rebuild a registered model from its description and load its weights strictly."""
    directory = Path(directory)
    desc_path, weights_path = directory / DESCRIPTION, directory / WEIGHTS
    for p in (desc_path, weights_path):
        if not p.is_file():
            raise CheckpointError(f"{p}: missing")
    try:
        desc = json.loads(desc_path.read_text())
        spec = FeatureSpec.model_validate(desc["feature_spec"])
        name, params = desc["name"], desc["params"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{desc_path}: not a valid model description ({e})") from e
    if desc.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{desc_path}: model format {desc.get('format')!r}, expected {MODEL_FORMAT}")
    if not isinstance(params, dict):
        raise CheckpointError(f"{desc_path}: params must be a mapping, got {type(params).__name__}")
    try:
        header = _tensor_shapes(weights_path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{weights_path}: unreadable safetensors file ({e})") from e
    # Build on the meta device first (no memory) and compare every shape with the file's header, so a
    # description that would allocate far more than its weights (`dim: 200000`) fails before allocating.
    try:
        entry = get_entry(name)
        params = {k: v for k, v in entry.cls.legacy_params(params).items() if k not in entry.fixed}
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in create_model(name, spec, **params).state_dict().items()}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{desc_path}: cannot build model {name!r}: {e.args[0] if e.args else e}") from e
    except Exception as e:  # noqa: BLE001  (any constructor failure is a bad description, not a crash)
        raise CheckpointError(f"{desc_path}: cannot build model {name!r}: {type(e).__name__}: {e}") from e
    missing, unexpected = sorted(set(shapes) - set(header)), sorted(set(header) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(f"{weights_path}: weights do not match {name!r} as described in {DESCRIPTION}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, shape in shapes.items():
        if header[k] != shape:
            raise CheckpointError(f"{weights_path}: weights do not match {name!r}: {k} is {list(header[k])} in "
                                  f"the file, {DESCRIPTION} implies {list(shape)}")
    model = create_model(name, spec, **params)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{weights_path}: unreadable safetensors file ({e})") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{weights_path}: weights do not match {name!r}: {e}") from e
    model.eval()
    return model, desc


OPTIMIZER = "optimizer.pt"
STATE = "state.json"


def save_checkpoint(
    directory: Path, model: RecModel, name: str, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Write a resume checkpoint as one unit: weights, optimizer moments and RNG, counters (`state.json`).

    The files are written into a new folder that then replaces `directory` by rename (`dacdr.fsutil`), and
    `state.json` records the sha256 of the others, so a checkpoint is either wholly the previous one or wholly
    this one, and a mixed one is detected on load.
    """
    directory = Path(directory)
    remove_stale_temps(directory)  # one writer per run directory: leftovers are from a killed write
    with atomic_dir(directory, overwrite=True, fault="checkpoint") as tmp:
        save_model(model, name, tmp)
        fault_point("checkpoint.weights")
        torch.save({"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, tmp / OPTIMIZER)
        fault_point("checkpoint.optimizer")
        files = {f: sha256_file(tmp / f) for f in (WEIGHTS, DESCRIPTION, OPTIMIZER)}
        (tmp / STATE).write_text(json.dumps(state | {"files": files}, indent=1))
        fault_point("checkpoint.state")


def load_checkpoint(directory: Path, log=None) -> tuple[RecModel, dict[str, Any], dict[str, Any]] | None:
    """The resume checkpoint in `directory` as (model, optimizer blob, state), or None when there is none.

    A checkpoint whose files do not all belong together (a torn write of an older dacdr, a file copied in)
    raises `CheckpointError` saying so, instead of resuming from a mix of two epochs.
    """
    directory = Path(directory)
    if recover_dir(directory) and log:
        log(f"{directory}: restored the previous checkpoint (a checkpoint write was interrupted)")
    if not directory.is_dir():
        return None
    present = sorted(p.name for p in directory.iterdir())
    if STATE not in present:
        if not present:
            return None
        raise CheckpointError(
            f"{directory}: torn checkpoint: {', '.join(present)} without {STATE} (a write was interrupted); "
            "refusing to resume from it; delete it or use --no-resume to start the run over")
    try:
        state = json.loads((directory / STATE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{directory / STATE}: unreadable ({e})") from e
    files = state.pop("files", None)
    if files is None:
        if log:
            log(f"{directory}: checkpoint of an older dacdr has no checksums; it cannot be checked for tearing")
    else:
        for f, digest in files.items():
            if not (directory / f).is_file():
                raise CheckpointError(f"{directory}: torn checkpoint: {f} is missing ({STATE} lists it)")
            if sha256_file(directory / f) != digest:
                raise CheckpointError(
                    f"{directory}: torn checkpoint: {f} is not the one {STATE} (phase {state.get('phase')}, "
                    f"epoch {state.get('epoch')}) was written with; refusing to resume from a mix of epochs "
                    "(use --no-resume to start over)")
    try:
        blob = torch.load(directory / OPTIMIZER, weights_only=True)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{directory / OPTIMIZER}: unreadable ({e})") from e
    model, _ = load_model(directory)
    return model, blob, state
