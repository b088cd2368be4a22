"""Several uvicorn worker processes serving one package version: a two-phase reload through a shared directory.

`dacdr serve --workers N` creates a state directory and hands it to every worker. Files in it:

```
current.json            {"generation": g, "package": path}   the committed package (new workers load it)
proposal.json           {"generation": g, "package": path}   a reload in progress
aborted/<g>             a proposal that failed in some worker
ready/<g>/<pid>         "ok" or the error: worker pid has loaded and warmed up proposal g
workers/<pid>.json      {"generation": g, "version": v}      what worker pid serves now
reload.lock             flock: one reload at a time across workers
cpus.json               {pid: cpu}: the CPU each live worker is pinned to (`--pin-workers`), under cpus.lock
connections.json        {pid: slot}: each live worker's slot in connections.bin (`--balance-connections`)
connections.bin         one int64 per slot: 1 + the worker's open connections (0: a free slot)
```

The worker that receives `POST /v1/admin/reload` writes a proposal; every worker (itself included) loads
and warms the package in a thread while it keeps serving the old one, and reports ready. Only when all live
workers are ready is `current.json` replaced; each worker swaps within one poll interval and reports, and
the reload answers once all have switched. If any worker fails to load, the proposal is aborted and every
worker keeps the old model. Files are replaced by rename, so readers never see half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

POLL_SECONDS = 0.01


@dataclass(frozen=True)
class Generation:
    number: int
    package: str


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def _read_generation(path: Path) -> Generation | None:
    try:
        data = json.loads(path.read_text())
        return Generation(int(data["generation"]), str(data["package"]))
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def pin_process(cpu: int) -> None:
    """Pin every thread of this process (and the threads it starts later) to one CPU (Linux)."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), {cpu})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerGroup:
    """One worker's view of the shared state directory."""

    def __init__(self, state_dir: str | Path, pid: int | None = None):
        self.dir = Path(state_dir)
        self.pid = pid or os.getpid()
        for sub in ("workers", "ready", "aborted"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------------- every worker
    def committed(self) -> Generation | None:
        return _read_generation(self.dir / "current.json")

    def proposal(self) -> Generation | None:
        return _read_generation(self.dir / "proposal.json")

    def aborted(self, generation: int) -> bool:
        return (self.dir / "aborted" / str(generation)).exists()

    def report(self, generation: int, version: str | None) -> None:
        """What this worker serves now (`version` None: starting)."""
        _write_json(self.dir / "workers" / f"{self.pid}.json", {"generation": generation, "version": version})

    def ready(self, generation: int, error: str | None = None) -> None:
        d = self.dir / "ready" / str(generation)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{self.pid}.tmp"
        tmp.write_text(error or "ok")
        tmp.replace(d / str(self.pid))

    def leave(self) -> None:
        (self.dir / "workers" / f"{self.pid}.json").unlink(missing_ok=True)

    def members(self) -> dict[int, dict]:
        """Live workers and what they serve; files of dead workers are removed."""
        out: dict[int, dict] = {}
        for f in (self.dir / "workers").glob("*.json"):
            pid = int(f.stem)
            if not _alive(pid):
                f.unlink(missing_ok=True)
                continue
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                out[pid] = json.loads(f.read_text())
        return out

    def claim_cpu(self, allowed: list[int]) -> int:
        """A CPU of `allowed` for this worker: the one fewest live workers hold (the lowest on a tie), so that N
        workers on N CPUs get one each and a replaced worker takes the CPU its predecessor left."""
        if not allowed:
            raise ValueError("pin workers: no CPU allowed")
        with open(self.dir / "cpus.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                path = self.dir / "cpus.json"
                try:
                    held = {int(p): int(c) for p, c in json.loads(path.read_text()).items()}
                except (FileNotFoundError, json.JSONDecodeError, ValueError, AttributeError):
                    held = {}
                held = {p: c for p, c in held.items() if p != self.pid and _alive(p)}
                load = {c: 0 for c in allowed}
                for c in held.values():
                    if c in load:
                        load[c] += 1
                cpu = min(allowed, key=lambda c: (load[c], c))
                _write_json(path, {str(p): c for p, c in (held | {self.pid: cpu}).items()})
                return cpu
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---------------------------------------------------------------------- the reloading worker
    @contextlib.contextmanager
    def lock(self):
        with open(self.dir / "reload.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # blocking: called from a thread
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def propose(self, package: str) -> int:
        numbers = [g.number for g in (self.committed(), self.proposal()) if g is not None]
        generation = max(numbers, default=0) + 1
        _write_json(self.dir / "proposal.json", {"generation": generation, "package": package})
        return generation

    def wait_ready(self, generation: int, timeout: float) -> dict[int, str]:
        """Block until every live worker has answered proposal `generation`; returns {pid: answer}."""
        deadline = time.monotonic() + timeout
        while True:
            members = self.members()
            answers = {}
            for pid in members:
                with contextlib.suppress(FileNotFoundError):
                    answers[pid] = (self.dir / "ready" / str(generation) / str(pid)).read_text()
            if members and len(answers) == len(members):
                return answers
            if time.monotonic() > deadline:
                missing = sorted(set(members) - set(answers))
                return answers | {pid: f"no answer within {timeout:.0f} s" for pid in missing}
            time.sleep(POLL_SECONDS)

    def abort(self, generation: int) -> None:
        (self.dir / "aborted" / str(generation)).touch()

    def commit(self, generation: int, package: str) -> None:
        _write_json(self.dir / "current.json", {"generation": generation, "package": package})

    def wait_switched(self, generation: int, timeout: float) -> dict[int, dict]:
        """Block until every live worker reports `generation`; returns the members."""
        deadline = time.monotonic() + timeout
        while True:
            members = self.members()
            if all(m.get("generation") == generation for m in members.values()) or time.monotonic() > deadline:
                return members
            time.sleep(POLL_SECONDS)


class ConnectionBalance:
    """Open connections per worker in a file the group shares (`connections.bin`, one int64 slot each), so that a
    worker holding more than its share, ceil(total / live workers), can ask a client to reconnect (`Connection:
    close` after a response): keep-alive connections are split between workers once, when accepted, and an
    uneven split (6 of 8 on one worker) leaves one worker queueing while the other idles. The worker that is
    busier accepts the new connection less often, so the split evens out. Each worker writes only its own slot;
    a dead worker's slot is cleared when a later worker claims one."""

    SLOTS = 64

    def __init__(self, state_dir: str | Path, pid: int | None = None):
        self.dir, self.pid = Path(state_dir), pid or os.getpid()
        self.count = 0
        with open(self.dir / "connections.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                path = self.dir / "connections.bin"
                with open(path, "ab") as f:
                    if f.tell() < self.SLOTS * 8:
                        f.write(bytes(self.SLOTS * 8 - f.tell()))
                try:
                    held = {int(p): int(i) for p, i in json.loads((self.dir / "connections.json").read_text()).items()}
                except (FileNotFoundError, json.JSONDecodeError, ValueError, AttributeError):
                    held = {}
                self._file = open(path, "r+b")  # noqa: SIM115  (kept open for the map's lifetime)
                self._map = mmap.mmap(self._file.fileno(), self.SLOTS * 8)
                for p, i in list(held.items()):
                    if p == self.pid or not _alive(p):
                        struct.pack_into("q", self._map, 8 * i, 0)
                        del held[p]
                free = sorted(set(range(self.SLOTS)) - set(held.values()))
                if not free:
                    raise RuntimeError(f"connection balance: more than {self.SLOTS} live workers")
                self.slot = free[0]
                _write_json(self.dir / "connections.json", {str(p): i for p, i in (held | {self.pid: self.slot}).items()})
                self._publish()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _publish(self) -> None:
        struct.pack_into("q", self._map, 8 * self.slot, self.count + 1)

    def opened(self) -> None:
        self.count += 1
        self._publish()

    def closed(self) -> None:
        self.count = max(self.count - 1, 0)
        self._publish()

    def over_share(self) -> bool:
        """Whether this worker holds more connections than ceil(total / live workers)."""
        if self.count <= 1:
            return False
        slots = [v for v in struct.unpack_from(f"{self.SLOTS}q", self._map) if v > 0]
        return self.count > math.ceil(sum(v - 1 for v in slots) / max(len(slots), 1))

    def close(self) -> None:
        struct.pack_into("q", self._map, 8 * self.slot, 0)
        self._map.close()
        self._file.close()
