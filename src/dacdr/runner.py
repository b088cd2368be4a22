"""Programmatic entry points: from a validated config to a trained, evaluated run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from dacdr.config import DataConfig, RunConfig, check_model_params
from dacdr.data.prepare import dataset_path, prepare
from dacdr.data.protocol import TrainingData
from dacdr.fsutil import recover_dir
from dacdr.models import create_model
from dacdr.training.trainer import Trainer


def _same_config(path: Path, cfg: RunConfig) -> bool:
    """Whether `path` (a run's config.yaml) describes `cfg`; fields added since it was written count as their
    defaults, so a newer dacdr still resumes an older run."""
    try:
        return RunConfig.model_validate(yaml.safe_load(path.read_text())) == cfg
    except (ValueError, yaml.YAMLError):
        return False


def train_run(
    cfg: RunConfig,
    prepared: TrainingData | None = None,
    run_dir: str | Path | None = None,
    console: Console | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data`, keep the best checkpoint, evaluate it on the test split."""
    check_model_params(cfg, "config")  # fail on an unknown model or a bad parameter before any data work
    prepared = prepared or prepare(cfg.data)
    run_dir = Path(run_dir or cfg.out or f"runs/{cfg.model.name.replace(' ', '_')}-seed{cfg.train.seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_text = yaml.safe_dump(cfg.model_dump(), sort_keys=False)
    previous = run_dir / "config.yaml"
    recover_dir(run_dir / "resume")  # a checkpoint swap cut short: its previous checkpoint counts below
    if resume and (run_dir / "resume").exists() and previous.exists() and not _same_config(previous, cfg):
        # Resuming under another config would silently mix two runs' weights and history.
        raise ValueError(f"{run_dir} holds a run with a different config.yaml; resume needs the same config "
                         "(use --no-resume to start over there, or another --out)")
    previous.write_text(config_text)
    import torch

    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model.name, prepared.spec, **cfg.model.params)
    trainer = Trainer(prepared, model, cfg.model.name, cfg.train, run_dir, console)
    history = trainer.fit(resume=resume)
    results = trainer.evaluate()
    results["history"] = history
    return results


def prepare_data(data: DataConfig, split_seed: int | None = None, data_root: str | Path = "data") -> TrainingData:
    """Deprecated spelling of `dacdr.data.prepare.prepare` (kept for 0.2 scripts)."""
    if split_seed is not None:
        data = data.model_copy(update={"split_seed": split_seed})
    return prepare(data, data_root=data_root)


__all__ = ["dataset_path", "prepare_data", "train_run"]
