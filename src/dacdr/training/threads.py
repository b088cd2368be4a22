"""How many torch intra-op threads a command uses.

torch's default is one thread per physical core. On a box where other jobs already run, that oversubscribes
the cores and training slows down many times over (a demo on a 2-core box shared with one other job ran at
841 samples/s, against 13,971 alone). So the `dacdr` commands that train, unless told otherwise, take their
share of the cores (`cores // local processes`) minus the threads that other processes are running right now.
The library leaves the process's torch setting alone: a `Trainer` changes it only for `train.num_threads`.
"""

from __future__ import annotations

import os
import time


def set_command_threads(n: int | None, local_world: int = 1) -> tuple[int, str]:
    """Set torch's thread count for a `dacdr` command: `n` (its `--threads`) when given, else `choose_threads`.
    Returns (threads, why) for the command to print."""
    threads, why = (n, "--threads") if n else choose_threads(None, local_world)
    import torch

    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads, why


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def other_runnable(samples: int = 3, interval: float = 0.01, source: str = "/proc/loadavg") -> int:
    """Threads of other processes runnable now: the kernel's count of runnable tasks (`/proc/loadavg`, which
    includes the reader) minus one, at its lowest over a few samples so a passing blip does not count.
    0 where the count cannot be read."""
    counts = []
    for i in range(samples):
        try:
            with open(source) as f:
                counts.append(int(f.read().split()[3].split("/")[0]))
        except (OSError, ValueError, IndexError):
            return 0
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, min(counts) - 1)


def choose_threads(requested: int | None, local_world: int = 1) -> tuple[int, str]:
    """(threads, why): `requested` when given, else OMP_NUM_THREADS, else this process's share of the cores
    that other processes leave free (at least 1)."""
    if requested:
        return requested, "requested"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = usable_cores()
    share = max(1, cores // max(local_world, 1))
    busy = other_runnable()
    n = max(1, min(share, cores - busy))
    why = f"{cores} cores"
    if local_world > 1:
        why += f" shared by {local_world} local processes"
    why += f", {busy} runnable thread{'s' if busy != 1 else ''} of other processes now"
    return n, f"{why}; set train.num_threads to choose"


__all__ = ["choose_threads", "other_runnable", "set_command_threads", "usable_cores"]
