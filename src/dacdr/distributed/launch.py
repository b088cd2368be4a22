"""Starting local process groups: what `dacdr train CONFIG --nproc N` runs on (`dacdr.recipes.train.train`).

`spawn` starts N local processes with `torch.multiprocessing` and gives each the environment torchrun
would (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so one code path serves both launchers.
Under `torchrun` (one or several hosts) plain `dacdr train CONFIG` reads that environment itself.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from dacdr.distributed.context import init_from_env, shutdown


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
