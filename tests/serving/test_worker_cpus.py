"""`--pin-workers`: every worker of a group claims the CPU fewest live workers hold, so N workers on N CPUs get
one each and a replaced worker takes the CPU its predecessor left."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dacdr.serving.workers import WorkerGroup, pin_process


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_workers_claim_distinct_cpus_and_a_dead_workers_cpu_is_reused(tmp_path):
    alive_a, alive_b, dead = os.getpid(), os.getppid(), _dead_pid()
    assert WorkerGroup(tmp_path, pid=dead).claim_cpu([2, 5]) == 2
    assert WorkerGroup(tmp_path, pid=alive_a).claim_cpu([2, 5]) == 2  # the dead worker's CPU is free again
    assert WorkerGroup(tmp_path, pid=alive_b).claim_cpu([2, 5]) == 5
    third = _dead_pid()
    assert WorkerGroup(tmp_path, pid=third).claim_cpu([2, 5]) == 2  # more workers than CPUs: spread evenly
    assert WorkerGroup(tmp_path, pid=alive_a).claim_cpu([2, 5]) in (2, 5)  # a worker asking again keeps a share
    with pytest.raises(ValueError, match="no CPU"):
        WorkerGroup(tmp_path).claim_cpu([])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_pin_process_pins_every_thread(tmp_path):
    code = ("import os, threading, time\n"
            "from dacdr.serving.workers import pin_process\n"
            "t = threading.Thread(target=time.sleep, args=(0.5,)); t.start()\n"
            f"pin_process({min(os.sched_getaffinity(0))})\n"
            "print(sorted({tuple(sorted(os.sched_getaffinity(int(x)))) for x in os.listdir('/proc/self/task')}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"[({min(os.sched_getaffinity(0))},)]"
    assert pin_process is not None
