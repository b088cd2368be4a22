"""`dacdr serve --workers 2 --engine onnx --pin-workers --balance-connections`: recommend and explain on every
worker (each on a CPU of its own), a reload reaches every worker under load, /metrics adds up across workers, and
keep-alive clients that a worker over its share of connections asks to reconnect lose no request."""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest

from dacdr.package import build_package, load_package
from tests.serving.helpers import Server, train_tiny_run

pytestmark = pytest.mark.slow  # real uvicorn processes, each on freshly trained packages

TOKEN = "test-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BODY = {"user_id": 3, "domain": "target_a", "items": [30, 31, 32]}


@pytest.fixture(scope="module")
def packages(handmade_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    return [build_package(train_tiny_run(handmade_path, root / f"run{s}", seed=s), root / f"pkg{s}",
                          log=lambda *_: None) for s in (0, 1)]


@pytest.fixture(scope="module")
def server(packages):
    srv = Server(packages[0], "--workers", "2", "--engine", "onnx", "--pin-workers", "--balance-connections",
                 token=TOKEN, timeout=120)
    yield srv
    srv.stop()


def fresh_readyz(url: str, n: int) -> list[dict]:
    """`n` answers of /readyz, each on a new connection (no keep-alive), so the kernel spreads them."""
    out = []
    for _ in range(n):
        with httpx.Client(base_url=url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            out.append(c.get("/readyz").json())
    return out


def both_workers(url: str, timeout: float = 300) -> list[dict]:
    """Fresh connections until both workers have answered (the kernel picks the worker that accepts, and a
    worker still loading accepts nothing yet: on a box busy with other jobs the second one took over 2 minutes
    to load and warm up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers = fresh_readyz(url, 20)
        if len({a["worker"] for a in answers}) == 2:
            return answers
        time.sleep(0.2)
    raise AssertionError("only one worker ever answered")


def test_every_worker_serves_the_package(server, packages):
    answers = both_workers(server.url)
    assert {a["model_version"] for a in answers} == {load_package(packages[0]).version}
    assert server.proc.pid not in {a["worker"] for a in answers}  # worker processes, not the supervisor
    assert all(a["workers_ready"] == a["workers"] == 2 for a in answers)  # the host is ready once both are
    cpus = {a["worker"]: tuple(a["cpus"]) for a in answers}  # --pin-workers: one CPU each, distinct ones
    assert all(len(c) == 1 for c in cpus.values())
    if len(os.sched_getaffinity(0)) >= 2:
        assert len(set(cpus.values())) == 2
    for _ in range(4):  # fresh connections: recommend and explain on whichever worker answers
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.post("/v1/recommend", json={"user_id": 3, "domain": "target_a", "k": 4, "explain": True})
            assert r.status_code == 200 and len(r.json()["items"]) == 4, r.text
            assert all("item_level" in x for x in r.json()["items"])


def test_reload_under_load_reaches_every_worker_and_fails_no_request(server, packages):
    old, new = (load_package(p).version for p in packages)
    statuses: list[int] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():  # a new connection now and then, so both workers get traffic
            with httpx.Client(base_url=server.url, timeout=30) as c:
                for _ in range(5):
                    statuses.append(c.post("/v1/score", json=BODY).status_code)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            r = c.post("/v1/admin/reload", json={"package": str(packages[1])}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json() | {"seconds": 0} == {"previous_version": old, "model_version": new, "seconds": 0,
                                             "generation": 1, "workers": 2}
        answers = both_workers(server.url)  # N fresh connections after the reload: all on the new version
        assert {a["model_version"] for a in answers} == {new}
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(statuses) > 0 and set(statuses) == {200}

    with httpx.Client(base_url=server.url, timeout=30) as c:
        bad = c.post("/v1/admin/reload", json={"package": "/no/such/package"}, headers=AUTH)
        assert bad.status_code == 422 and bad.json()["field"] == "package"
        assert {a["model_version"] for a in both_workers(server.url)} == {new}


def _value(text: str, prefix: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(prefix))


def test_metrics_add_up_across_workers(server):
    key = 'dacdr_requests_total{method="POST",path="/v1/score/batch",status="200"}'
    with httpx.Client(base_url=server.url, timeout=30) as c:
        before = _value(c.get("/metrics").text, key)
    n = 40
    for _ in range(n):  # fresh connections: both workers count some of them
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.post("/v1/score/batch", json={"requests": [BODY]}).status_code == 200
    seen = set()
    for _ in range(10):
        with httpx.Client(base_url=server.url, timeout=30) as c:
            text = c.get("/metrics").text
        assert _value(text, key) == before + n  # whichever worker answers, it reports the sum
        seen |= {ln.split('pid="')[1].split('"')[0] for ln in text.splitlines()
                 if ln.startswith("dacdr_model_info{") and ln.endswith(" 1.0")}
    assert len(seen) == 2  # one serving line per live worker


def test_connections_a_worker_closes_to_rebalance_lose_no_request(server):
    """8 keep-alive clients at once: every answer is 200 with its scores; each `connection: close` a worker
    sends (it held more than its share) is counted in `dacdr_connections_rebalanced_total`, and the client's
    next request simply opens a new connection."""
    key = "dacdr_connections_rebalanced_total"
    with httpx.Client(base_url=server.url, timeout=30) as c:
        before = _value(c.get("/metrics").text, key)
    closes, statuses = [], []

    def client():
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for _ in range(15):
                r = c.post("/v1/score", json=BODY)
                statuses.append(r.status_code == 200 and len(r.json()["scores"]) == 3)
                closes.append(r.headers.get("connection") == "close")

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(statuses) == 120 and all(statuses)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert _value(c.get("/metrics").text, key) == before + sum(closes)
