"""`--pin-workers`: every worker of a group claims the CPU fewest live workers hold, so N workers on N CPUs get
one each and a replaced worker takes the CPU its predecessor left. `--balance-connections`: a worker knows when
it holds more than its share of the group's open connections."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dacdr.serving.workers import ConnectionBalance, WorkerGroup, pin_process


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


def test_a_worker_over_its_share_of_connections_knows_it(tmp_path):
    a, b = ConnectionBalance(tmp_path, pid=os.getpid()), ConnectionBalance(tmp_path, pid=os.getppid())
    assert (a.slot, b.slot) == (0, 1)
    for _ in range(6):
        a.opened()
    for _ in range(2):
        b.opened()
    assert a.over_share() and not b.over_share()  # 6 of 8 against a share of 4
    a.closed()
    b.opened()
    assert a.over_share()  # 5 of 8
    a.closed()
    assert not a.over_share() and not b.over_share()  # 4 of 7: within ceil(7 / 2)
    a.close()  # a worker that leaves frees its slot: the other one then holds all connections, its share
    assert not b.over_share()
    b.close()


def test_a_dead_workers_connection_slot_is_cleared_and_reused(tmp_path):
    dead = ConnectionBalance(tmp_path, pid=_dead_pid())
    for _ in range(10):
        dead.opened()  # a worker that died with connections open, without clearing its slot
    live = ConnectionBalance(tmp_path, pid=os.getpid())
    assert live.slot == dead.slot  # its slot, cleared
    for _ in range(3):
        live.opened()
    assert not live.over_share()  # the dead worker's ten connections no longer count
    live.close()
    dead._map.close()
