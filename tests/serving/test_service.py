"""The scoring service end to end, through a real uvicorn process on a free loopback port."""

from __future__ import annotations

import json
import os
import threading

import httpx
import numpy as np
import pytest

from dacdr.data.dataset import read_spec
from dacdr.package import build_package, load_package, run_prepared
from tests.serving.helpers import Server, train_tiny_run

pytestmark = pytest.mark.slow  # real uvicorn processes, each on freshly trained packages

TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def packages(handmade_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    a = build_package(train_tiny_run(handmade_path, root / "run0", seed=0), root / "pkg0", log=lambda *_: None)
    b = build_package(train_tiny_run(handmade_path, root / "run1", seed=1), root / "pkg1", log=lambda *_: None)
    return a, b


@pytest.fixture(scope="module")
def server(packages):
    srv = Server(packages[0], "--max-items", "50", "--max-body-bytes", "8192", token=TOKEN)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _store_user(package) -> tuple[str, int]:
    pkg = load_package(package)
    for u in pkg.vocabs["user"].values:
        h = pkg.store.history(u)
        if h is not None and len(h) >= 3:
            return u, len(h)
    raise AssertionError("no user with a history")


def test_health_ready_domains(client, server, packages):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    version = load_package(packages[0]).version
    assert ready.pop("cpus") == sorted(os.sched_getaffinity(server.proc.pid))  # the CPUs the worker may use
    assert ready == {"ready": True, "model_version": version, "engine": "torch", "worker": server.proc.pid,
                     "graph": "eager"}
    doms = client.get("/v1/domains").json()
    assert [d["domain"] for d in doms["domains"]] == ["source", "target_a", "target_b"]
    assert doms["task"] == "ctr"


def test_score_uses_the_store_and_keeps_item_order(client, packages):
    user, n = _store_user(packages[0])
    r = client.post("/v1/score", json={"user_id": int(user), "domain": "target_a", "items": [30, 31, 32]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["scores"]) == 3 and all(0 < s < 1 for s in body["scores"])
    assert body["history"] == {"source": "store", "length": min(n, 8), "unknown_user": False, "unknown_items": []}
    assert body["unknown_items"] == []
    rev = client.post("/v1/score", json={"user_id": user, "domain": "target_a", "items": [32, 31, 30]}).json()
    np.testing.assert_allclose(rev["scores"][::-1], body["scores"], atol=1e-6)  # "7" and 7 are one user


def test_store_history_equals_the_same_history_sent_in_the_request(client, packages, handmade_path):
    """The store holds the user's last training-period source behaviours: sending them gives the same scores."""
    user, _ = _store_user(packages[0])
    prepared, _ = run_prepared(packages[0].parent / "run0")
    test_start = read_spec(handmade_path).test_start
    s = prepared.samples
    uidx = prepared.vocabs["user"].lookup(user)
    rows = np.flatnonzero(s["is_source"] & (s["user"] == uidx) & (s["timestamp"] < test_start))
    rows = rows[np.argsort(s["timestamp"][rows], kind="stable")][-8:]
    items, behs = prepared.vocabs["item"].values, prepared.vocabs["behaviour"].values
    history = [{"item": int(items[s["item"][i] - 2]), "behaviour": behs[s["behaviour"][i] - 2]} for i in rows]
    from_store = client.post("/v1/score", json={"user_id": user, "domain": "target_b", "items": [45, 50]}).json()
    sent = client.post("/v1/score", json={"user_id": user, "domain": "target_b", "items": [45, 50],
                                          "history": history}).json()
    assert sent["history"]["source"] == "request"
    np.testing.assert_allclose(sent["scores"], from_store["scores"], atol=1e-6)


def test_unknown_user_and_unknown_items_are_reported(client):
    body = client.post("/v1/score", json={"user_id": "stranger", "domain": "target_a",
                                          "items": [30, "nope", 31, 99999]}).json()
    assert body["history"] == {"source": "none", "length": 0, "unknown_user": True, "unknown_items": []}
    assert body["unknown_items"] == ["nope", 99999]
    assert body["scores"][1] == pytest.approx(body["scores"][3])  # both the out-of-vocabulary row
    assert all(np.isfinite(body["scores"]))
    hist = client.post("/v1/score", json={"user_id": "stranger", "domain": "target_a", "items": [30],
                                          "history": [{"item": "ghost", "behaviour": "click"}]}).json()
    assert hist["history"]["unknown_items"] == ["ghost"]


def test_batch_matches_single_requests(client, packages):
    user, _ = _store_user(packages[0])
    reqs = [{"user_id": user, "domain": "target_a", "items": [30, 33]},
            {"user_id": "stranger", "domain": "target_b", "items": [46]},
            {"user_id": user, "domain": "target_b", "items": [47, 48, 49], "history": []}]
    batch = client.post("/v1/score/batch", json={"requests": reqs})
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    for req, res in zip(reqs, results, strict=True):
        single = client.post("/v1/score", json=req).json()
        np.testing.assert_allclose(res["scores"], single["scores"], atol=1e-6)
        assert res["history"] == single["history"]


BAD_REQUESTS = [
    ("/v1/score", b'{"user_id": 1, "domain": "target_a", "items": [1,', 422, "body"),
    ("/v1/score", b'[1, 2]', 422, "body"),
    ("/v1/score", {"domain": "target_a", "items": [30]}, 422, "user_id"),
    ("/v1/score", {"user_id": 1, "domain": "target_z", "items": [30]}, 422, "domain"),
    ("/v1/score", {"user_id": 1, "domain": "target_a", "items": []}, 422, "items"),
    ("/v1/score", {"user_id": 1, "domain": "target_a", "items": "30"}, 422, "items"),
    ("/v1/score", {"user_id": 1, "domain": "target_a", "items": [1.5]}, 422, "items[0]"),
    ("/v1/score", {"user_id": 1, "domain": "target_a", "items": list(range(51))}, 422, "items"),
    ("/v1/score", {"user_id": 1, "domain": "target_a", "items": [30], "colour": 1}, 422, "colour"),
    ("/v1/score", {"user_id": 1, "domain": "target_a", "items": [30],
                   "history": [{"item": 3, "behaviour": "teleport"}]}, 422, "history[0].behaviour"),
    ("/v1/score", {"user_id": 1, "domain": "target_a", "items": [30], "history": [{"item": 3}]},
     422, "history[0].behaviour"),
    ("/v1/score", {"user_id": True, "domain": "target_a", "items": [30]}, 422, "user_id"),
    ("/v1/score", {"user_id": 1, "domain": "target_a", "items": [f"item-{i}" for i in range(49)] * 20},
     413, "body"),
    ("/v1/score/batch", {"requests": []}, 422, "requests"),
    ("/v1/score/batch", {"requests": [{"user_id": 1, "domain": "target_a", "items": [30]},
                                      {"user_id": 1, "domain": "nowhere", "items": [30]}]}, 422, "requests[1].domain"),
]


@pytest.mark.parametrize(("path", "payload", "status", "field"), BAD_REQUESTS)
def test_bad_input_gets_a_4xx_naming_the_field(client, path, payload, status, field):
    if isinstance(payload, bytes):
        r = client.post(path, content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=payload)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["field"] == field, body
    assert body["error"].startswith(field + ":")


def test_streamed_oversize_body_is_cut_off(client):
    chunk = b'{"user_id": 1, "domain": "target_a", "items": [' + b"1," * 10000 + b"1]}"

    def stream():
        for i in range(0, len(chunk), 1000):
            yield chunk[i:i + 1000]

    r = client.post("/v1/score", content=stream(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"
    assert client.get("/healthz").status_code == 200  # the worker is free again


def test_reload_needs_the_token_and_rejects_a_bad_package(client, tmp_path):
    assert client.post("/v1/admin/reload").status_code == 401
    assert client.post("/v1/admin/reload", headers={"authorization": "Bearer wrong"}).status_code == 401
    r = client.post("/v1/admin/reload", json={"package": str(tmp_path / "nothing")},
                    headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 422 and r.json()["field"] == "package"
    assert client.get("/readyz").status_code == 200


def test_reload_under_concurrent_requests_drops_nothing(server, packages):
    old, new = (load_package(p).version for p in packages)
    assert old != new
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def hammer():
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/score", json={"user_id": 3, "domain": "target_a", "items": list(range(30, 45))})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["model_version"])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while len(statuses) < 20:
                threading.Event().wait(0.05)
            r = c.post("/v1/admin/reload", json={"package": str(packages[1])},
                       headers={"authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200, r.text
            assert r.json() == r.json() | {"previous_version": old, "model_version": new}
            n_at_swap = len(statuses)
            while len(statuses) < n_at_swap + 20:
                threading.Event().wait(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert set(statuses) == {200}
    assert versions[0] == old and versions[-1] == new
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/readyz").json()["model_version"] == new
        c.post("/v1/admin/reload", json={"package": str(packages[0])}, headers={"authorization": f"Bearer {TOKEN}"})


def test_metrics_text(client):
    from prometheus_client.parser import text_string_to_metric_families

    client.post("/v1/score", json={"user_id": 1, "domain": "target_a", "items": [30]})
    client.post("/v1/score", json={"user_id": 1, "domain": "nowhere", "items": [30]})
    text = client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    samples = [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text.text) for s in fam.samples]

    def value(name: str, **labels: str) -> float:
        found = [v for n, lab, v in samples if n == name and lab == labels]
        assert len(found) == 1, (name, labels)
        return found[0]

    assert value("dacdr_requests_total", method="POST", path="/v1/score", status="200") >= 1
    assert value("dacdr_request_errors_total", path="/v1/score", kind="client") >= 1
    count = value("dacdr_request_duration_seconds_count", path="/v1/score")
    assert value("dacdr_request_duration_seconds_bucket", path="/v1/score", le="+Inf") == count
    assert value("dacdr_request_duration_seconds_bucket", path="/v1/score", le="0.001") <= count
    serving = [lab["version"] for n, lab, v in samples if n == "dacdr_model_info" and v == 1]
    assert serving == [client.get("/readyz").json()["model_version"]]  # versions swapped out read 0
    assert "# TYPE dacdr_request_duration_seconds histogram" in text.text.splitlines()


def test_onnx_engine_serves_the_same_scores(packages, client):
    srv = Server(packages[0], "--engine", "onnx", "--onnx-graph", "single", token=None)
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.get("/readyz").json()["engine"] == "onnx"
            assert c.get("/readyz").json()["graph"] == "single"
            for req in ({"user_id": 3, "domain": "target_a", "items": [30, 31, "x"]},
                        {"user_id": "stranger", "domain": "target_b", "items": [45]}):
                onnx = c.post("/v1/score", json=req).json()
                eager = client.post("/v1/score", json=req).json()
                np.testing.assert_allclose(onnx["scores"], eager["scores"], atol=1e-5)
            r = c.post("/v1/admin/reload", headers={"authorization": "Bearer anything"})
            assert r.status_code == 403 and json.loads(r.text)["field"] == "authorization"
    finally:
        srv.stop()


def test_split_onnx_engine_end_to_end_with_reload(packages, client):
    """`--engine onnx` serves DACDR as the split graphs (said in /readyz): the eager engine's scores for store
    users, unknown users and request histories, and after a reload to another package that package's scores,
    none from the old package's user-side cache."""
    from dacdr.serving.scoring import ScoreQuery, Scorer

    srv = Server(packages[0], "--engine", "onnx", "--user-cache", "64", token=TOKEN)
    auth = {"authorization": f"Bearer {TOKEN}"}
    reqs = [{"user_id": 3, "domain": "target_a", "items": [30, 31, "x"]},
            {"user_id": "stranger", "domain": "target_b", "items": [45]},
            {"user_id": 3, "domain": "target_a", "items": [30, 45], "history": [{"item": 30, "behaviour": "click"}]}]
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            ready = c.get("/readyz").json()
            assert ready["graph"] == "split" and ready["user_cache"]["max"] == 64
            for _ in range(2):  # the second pass: user sides from the cache
                for req in reqs:
                    np.testing.assert_allclose(c.post("/v1/score", json=req).json()["scores"],
                                               client.post("/v1/score", json=req).json()["scores"], atol=1e-5)
            assert c.get("/readyz").json()["user_cache"]["hits"] >= len(reqs)
            r = c.post("/v1/admin/reload", json={"package": str(packages[1])}, headers=auth)
            assert r.status_code == 200, r.text
            ready = c.get("/readyz").json()
            assert ready["model_version"] == load_package(packages[1]).version and ready["graph"] == "split"
            eager = Scorer.load(packages[1], "torch")
            for req in reqs:
                want = eager.score([ScoreQuery(req["user_id"], req["domain"], req["items"], req.get("history"))])[0]
                np.testing.assert_allclose(c.post("/v1/score", json=req).json()["scores"], want["scores"], atol=1e-5)
    finally:
        srv.stop()


def test_latency_options_do_not_change_answers(packages, client):
    """Thread pool vs event loop (the default: the fast route on the loop, other routes in the pool), FastAPI's
    JSON vs orjson, with and without the history cache, the fast route
    or FastAPI's, the split ONNX engine: same bodies."""
    from fastapi.testclient import TestClient

    from dacdr.serving.app import ServiceSettings, create_app

    req = {"user_id": 3, "domain": "target_a", "items": [30, 31, "x"]}
    expected = client.post("/v1/score", json=req).json()
    for options in ({"inline": True, "fast_json": False, "history_cache": 0}, {"history_cache": 2},
                    {"fast_route": False}, {"engine": "onnx", "inline": True}, {"engine": "onnx", "inline": False},
                    {"engine": "onnx", "inline": False, "score_threads": 1}):
        with TestClient(create_app(ServiceSettings(package=packages[0], **options))) as c:
            for _ in range(2):  # the second answer comes from the cache
                got = c.post("/v1/score", json=req).json()
                np.testing.assert_allclose(got.pop("scores"), expected["scores"], atol=1e-5)
                assert got == {k: v for k, v in expected.items() if k != "scores"}
