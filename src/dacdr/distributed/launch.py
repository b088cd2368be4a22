"""Launching training on several processes: `dacdr train CONFIG --nproc N`, or any `torchrun` line.

`--nproc N` starts N local processes with `torch.multiprocessing` and gives each the environment torchrun
would (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so one code path serves both launchers.
Under `torchrun` (one or several hosts) plain `dacdr train CONFIG` reads that environment itself.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dacdr.config import RunConfig
from dacdr.distributed.context import barrier, init_from_env, shutdown


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, fn: Callable[..., Any], nproc: int, port: int, args: tuple) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)})
    init_from_env()
    try:
        fn(*args)
    finally:
        shutdown()


def spawn(fn: Callable[..., Any], nproc: int, *args: Any) -> None:
    """Run `fn(*args)` in `nproc` local processes joined in one process group (gloo on CPU, NCCL on GPU).

    `fn` must be importable by name (a module-level function): the processes are spawned, not forked.
    """
    import torch.multiprocessing as mp

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    mp.spawn(_entry, args=(fn, nproc, free_port(), args), nprocs=nproc, join=True)


def default_run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.out or f"runs/{cfg.model.name.replace(' ', '_')}-seed{cfg.train.seed}")


def _train_worker(cfg_raw: dict[str, Any], run_dir: str, resume: bool) -> None:
    train_here(RunConfig.model_validate(cfg_raw), Path(run_dir), resume)


def train_here(cfg: RunConfig, run_dir: Path, resume: bool = True) -> dict[str, Any]:
    """Train in this process, as one rank of the process group if there is one.

    Rank 0 prepares (or generates) the data first and the others then read its cache, so N ranks do not
    build the same cache N times.
    """
    from dacdr.data.prepare import prepare
    from dacdr.runner import train_run

    ctx = init_from_env()
    if not ctx.is_main:
        barrier(ctx)
    prepared = prepare(cfg.data)
    if ctx.is_main:
        barrier(ctx)
    return train_run(cfg, prepared=prepared, run_dir=run_dir, resume=resume)


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
    from dacdr.data.prepare import prepare

    prepare(cfg.data)  # once, before the ranks start: they all read this cache
    spawn(_train_worker, nproc, cfg.model_dump(), str(run_dir), resume)
    return json.loads((run_dir / "results.json").read_text())
