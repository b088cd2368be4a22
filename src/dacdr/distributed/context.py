"""Who am I in a distributed run: rank, world size, device, and the few collectives the trainer needs.

A run is distributed when the launcher (`torchrun`, or `dacdr train --nproc N`, which uses the same
environment variables) sets ``WORLD_SIZE`` > 1. Everything here degrades to a no-op in a single process, so
the trainer calls it unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """The one process that writes checkpoints, logs and results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


_SINGLE = DistContext()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def init_from_env(backend: str | None = None) -> DistContext:
    """Join the process group described by the torchrun environment (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    Backend: NCCL when CUDA is available, gloo otherwise (gloo is the CPU backend). Also limits torch's
    intra-op threads so that the ranks of one host share its cores instead of oversubscribing them.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return _SINGLE
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank, world, local_rank, local_world, backend, device)


def current() -> DistContext:
    """The context of an already initialised process group (single-process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return _SINGLE
    backend = dist.get_backend()
    local_rank = _env_int("LOCAL_RANK", 0)
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank,
                       _env_int("LOCAL_WORLD_SIZE", dist.get_world_size()), backend, device)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: DistContext, values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64, so sample counts stay exact)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def all_gather_concat(ctx: DistContext, array: np.ndarray) -> np.ndarray:
    """Concatenate each rank's 1-d array in rank order, on every rank (lengths may differ).

    Metrics are then computed on the union of the predictions: an AUC of all samples, not a mean of
    per-rank AUCs.
    """
    if not ctx.distributed:
        return array
    local = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(ctx.device)
    sizes = [torch.zeros(1, dtype=torch.long, device=ctx.device) for _ in range(ctx.world)]
    dist.all_gather(sizes, torch.tensor([local.numel()], dtype=torch.long, device=ctx.device))
    counts = [int(s.item()) for s in sizes]
    width = max(counts)
    padded = torch.zeros(width, dtype=torch.float64, device=ctx.device)
    padded[: local.numel()] = local
    parts = [torch.empty(width, dtype=torch.float64, device=ctx.device) for _ in range(ctx.world)]
    dist.all_gather(parts, padded)
    out = np.concatenate([p[:n].cpu().numpy() for p, n in zip(parts, counts, strict=True)])
    return out.astype(array.dtype, copy=False)


def rank_slice(n: int, ctx: DistContext) -> slice:
    """The contiguous part of `n` items this rank handles (parts differ by at most one item)."""
    bounds = np.linspace(0, n, ctx.world + 1).round().astype(np.int64)
    return slice(int(bounds[ctx.rank]), int(bounds[ctx.rank + 1]))
