"""Saving and loading models without executing code: safetensors weights plus a JSON description."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dacdr.data.features import FeatureSpec
from dacdr.models import RecModel, create_model, get_entry

MODEL_FORMAT = 1
WEIGHTS = "model.safetensors"
DESCRIPTION = "model.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not match its description."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def model_description(name: str, model: RecModel) -> dict[str, Any]:
    fixed = get_entry(name).fixed
    params = {k: v for k, v in model.params.items() if k not in fixed}
    return {"format": MODEL_FORMAT, "name": name, "params": params, "feature_spec": model.spec.model_dump()}


def save_model(model: RecModel, name: str, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` and `model.json` into `directory` (each atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": str(MODEL_FORMAT), "name": name})
    os.replace(tmp, directory / WEIGHTS)
    _atomic_write_text(directory / DESCRIPTION, json.dumps(model_description(name, model) | (extra or {}), indent=1))
    return directory


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
    try:
        entry = get_entry(name)
        params = {k: v for k, v in entry.cls.legacy_params(params).items() if k not in entry.fixed}
        model = create_model(name, spec, **params)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{desc_path}: cannot build model {name!r}: {e}") from e
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


def save_training_state(directory: Path, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Everything `resume` needs beyond the weights: optimizer moments, counters, RNG state."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "optimizer.pt.tmp"
    torch.save({"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, directory / "optimizer.pt")
    _atomic_write_text(directory / "state.json", json.dumps(state, indent=1))


def load_training_state(directory: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    if not (directory / "state.json").is_file():
        return None
    try:
        blob = torch.load(directory / "optimizer.pt", weights_only=True)
        state = json.loads((directory / "state.json").read_text())
    except (OSError, RuntimeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{directory}: resume state unreadable ({e})") from e
    return blob, state
