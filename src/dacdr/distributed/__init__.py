"""Distributed training on PyTorch DistributedDataParallel: process-group setup, launch, rank-aware helpers.

Launch with `dacdr train CONFIG --nproc N` on one host, or with `torchrun` on one or several hosts
(docs/scaling.md). gloo on CPU, NCCL on GPU.
"""

from dacdr.distributed.context import (
    DistContext,
    all_gather_concat,
    all_reduce_sum,
    barrier,
    current,
    init_from_env,
    rank_slice,
    shutdown,
)

__all__ = [
    "DistContext",
    "all_gather_concat",
    "all_reduce_sum",
    "barrier",
    "current",
    "init_from_env",
    "rank_slice",
    "shutdown",
]
