"""Training recipe: from a validated config to a trained, evaluated run directory.

`train_run` trains in this process; `train` is `dacdr train` (alone, under torchrun, or in `--nproc` spawned
processes, through `dacdr.distributed.launch.spawn`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import Console

from dacdr.config import RunConfig, check_model_params
from dacdr.data.prepare import prepare
from dacdr.data.protocol import TrainingData
from dacdr.distributed.context import barrier, init_from_env
from dacdr.distributed.launch import spawn
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
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
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


def default_run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.out or f"runs/{cfg.model.name.replace(' ', '_')}-seed{cfg.train.seed}")


def train_here(cfg: RunConfig, run_dir: Path, resume: bool = True) -> dict[str, Any]:
    """Train in this process, as one rank of the process group if there is one.

    Rank 0 prepares (or generates) the data first and the others then read its cache, so N ranks do not
    build the same cache N times.
    """
    ctx = init_from_env()
    if not ctx.is_main:
        barrier(ctx)
    prepared = prepare(cfg.data)
    if ctx.is_main:
        barrier(ctx)
    return train_run(cfg, prepared=prepared, run_dir=run_dir, resume=resume)


def _train_worker(cfg_raw: dict[str, Any], run_dir: str, resume: bool) -> None:
    train_here(RunConfig.model_validate(cfg_raw), Path(run_dir), resume)


def train(cfg: RunConfig, nproc: int = 1, run_dir: Path | None = None, resume: bool = True) -> dict[str, Any] | None:
    """`dacdr train`: in this process (alone or under torchrun) or in `nproc` spawned processes.

    Returns the results on the process that should print them (rank 0), else None.
    """
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    if nproc <= 1:
        results = train_here(cfg, run_dir, resume)
        return results if int(os.environ.get("RANK", "0")) == 0 else None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--nproc starts its own processes; under torchrun leave it out")
    prepare(cfg.data)  # once, before the ranks start: they all read this cache
    spawn(_train_worker, nproc, cfg.model_dump(), str(run_dir), resume)
    return RunDir(run_dir).read_results()


__all__ = ["default_run_dir", "train", "train_here", "train_run"]
