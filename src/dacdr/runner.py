"""Programmatic entry points: from a validated config to a trained, evaluated run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from dacdr.config import DataConfig, RunConfig, check_model_params
from dacdr.data.prepare import dataset_path, prepare
from dacdr.data.protocol import TrainingData
from dacdr.models import create_model
from dacdr.training.rundir import RunDir
from dacdr.training.trainer import Trainer


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
    run = RunDir(run_dir).create()
    if resume:
        run.check_resumable(cfg)
    run.write_config(cfg)
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
