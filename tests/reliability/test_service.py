"""The service under bad requests, slow clients and bad packages: every failure a status and `{error, field}`."""

from __future__ import annotations

import json
import socket
import time

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dacdr.cli import app as cli_app
from dacdr.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dacdr.package import build_package, load_package
from dacdr.recipes.train import train_run
from dacdr.serving.app import MAX_HISTORY, ServiceSettings, create_app
from dacdr.serving.scoring import RequestError, ScoreQuery, Scorer
from tests.reliability.conftest import QUIET
from tests.reliability.helpers import copy_package, reseal
from tests.serving.helpers import TINY_PARAMS, Server

TOKEN = "reliability-token-0123"
AUTH = {"authorization": f"Bearer {TOKEN}"}
GOOD = {"user_id": 1, "domain": "target_a", "items": [30, 31]}


@pytest.fixture(scope="module")
def app_client(packages):
    with TestClient(create_app(ServiceSettings(packages[0], admin_token=TOKEN)), raise_server_exceptions=False) as c:
        yield c


def _shape(r, status: int, field: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["field"] == field and body["error"].startswith(f"{field}: "), body
    return body


# ------------------------------------------------------------------------------------------ 2. ratings


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_ratings_are_a_422_naming_the_field(app_client, raw):
    body = ('{"user_id": 1, "domain": "target_a", "items": [30], '
            '"history": [{"item": 3, "behaviour": "click", "rating": ' + raw + '}]}')
    _shape(app_client.post("/v1/score", content=body, headers={"content-type": "application/json"}),
           422, "history[0].rating")


@pytest.fixture(scope="module")
def rating_package(tmp_path_factory):
    from tests.test_ptupcdr_export import write_amazon_pair

    root = tmp_path_factory.mktemp("rating")
    data = write_amazon_pair(root / "raw")
    cfg = RunConfig(data=DataConfig(path=str(data), max_len=8, protocol="users", cold_start_share=0.5),
                    model=ModelConfig(name="DACDR", params=TINY_PARAMS),
                    train=TrainConfig(epochs=1, batch_size=64, progress=False, num_threads=1))
    train_run(cfg, run_dir=root / "run")
    return build_package(root / "run", root / "pkg", **QUIET)


def test_out_of_range_ratings_are_refused_in_range_ones_rounded(rating_package):
    scorer = Scorer.load(rating_package)
    lo, hi = scorer.spec.label_range
    item = scorer.item_vocab.values[0]
    target = scorer.spec.target_domains[0]

    def score(rating):
        return scorer.score([ScoreQuery("u", target, [item], [{"item": item, "behaviour": scorer.behaviour_vocab.values[0], "rating": rating}])])

    for bad in (lo - 1, hi + 0.5, float("nan")):
        with pytest.raises(RequestError, match=r"outside the model's rating range") as err:
            score(bad)
        assert err.value.field == "history[0].rating"
    assert score(hi - 0.4)[0]["scores"] == score(hi)[0]["scores"]  # rounded to the nearest whole rating


# ------------------------------------------------------------------------------------------ 7. shape, caps


@pytest.mark.parametrize("method,path,status,field", [("get", "/nowhere", 404, "path"),
                                                     ("get", "/v1/score", 405, "method"),
                                                     ("delete", "/v1/domains", 405, "method")])
def test_404_and_405_have_the_error_shape(app_client, method, path, status, field):
    _shape(getattr(app_client, method)(path), status, field)


@pytest.mark.parametrize("body", [b'{"user_id": ' + b"9" * 5000 + b', "domain": "target_a", "items": [30]}',
                                  b"[" * 10_000 + b"]" * 10_000,
                                  b'{"user_id": 1, "domain": "target_a", "items": [30], "x": ' + b"[" * 10_000
                                  + b"]" * 10_000 + b"}"])
def test_unparseable_bodies_have_the_error_shape(app_client, body):
    r = app_client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    _shape(r, r.status_code, "body")
    assert app_client.get("/healthz").status_code == 200


def test_history_is_capped(app_client):
    event = {"item": 3, "behaviour": "click"}
    ok = app_client.post("/v1/score", json=GOOD | {"history": [event] * MAX_HISTORY})
    assert ok.status_code == 200 and ok.json()["history"]["length"] == 8  # the model reads its last max_len
    _shape(app_client.post("/v1/score", json=GOOD | {"history": [event] * (MAX_HISTORY + 1)}), 422, "history")


# ------------------------------------------------------------------------------------------ 7. the admin token


@pytest.mark.parametrize("header", [TOKEN, f"Token {TOKEN}", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x", ""])
def test_reload_requires_the_bearer_scheme_and_the_token(app_client, header):
    r = app_client.post("/v1/admin/reload", headers={"authorization": header} if header else {})
    _shape(r, 401, "authorization")
    assert r.headers["www-authenticate"] == "Bearer"


def test_bearer_scheme_is_case_insensitive(app_client, packages):
    r = app_client.post("/v1/admin/reload", headers={"authorization": f"bearer {TOKEN}"})
    assert r.status_code == 200, r.text


def test_short_tokens_are_refused_at_start_up(packages):
    with pytest.raises(ValueError, match="at least 16 characters"):
        ServiceSettings(packages[0], admin_token="short-token")
    result = CliRunner().invoke(cli_app, ["serve", str(packages[0])], env={"DACDR_ADMIN_TOKEN": "s3cret"})
    assert result.exit_code == 2 and "at least 16 characters" in result.output, result.output


# ------------------------------------------------------------------------------------------ 5, 6. reload


def test_reload_by_path_only_under_the_reload_root(app_client, packages, tmp_path):
    outside = copy_package(packages[1], tmp_path / "elsewhere")
    _shape(app_client.post("/v1/admin/reload", json={"package": str(outside)}, headers=AUTH), 422, "package")
    sneaky = str(packages[0].parent / ".." / tmp_path.name / "elsewhere")
    _shape(app_client.post("/v1/admin/reload", json={"package": sneaky}, headers=AUTH), 422, "package")
    r = app_client.post("/v1/admin/reload", json={"package": str(packages[1])}, headers=AUTH)  # a sibling: allowed
    assert r.status_code == 200 and r.json()["model_version"] == load_package(packages[1]).version
    app_client.post("/v1/admin/reload", json={"package": str(packages[0])}, headers=AUTH)


def test_any_reload_failure_is_a_status_with_a_message_and_the_old_model_serves(app_client, packages,
                                                                                 monkeypatch):
    before = app_client.get("/readyz").json()["model_version"]
    state = app_client.app.state.service

    def explode(path):
        raise RuntimeError("the model cannot be built")

    monkeypatch.setattr(state, "load", explode)
    body = _shape(app_client.post("/v1/admin/reload", headers=AUTH), 500, "package")
    assert "RuntimeError: the model cannot be built" in body["error"]
    assert app_client.get("/readyz").json()["model_version"] == before
    assert app_client.post("/v1/score", json=GOOD).status_code == 200


@pytest.fixture(scope="module")
def garbage_onnx(packages, tmp_path_factory):
    pkg = copy_package(packages[1], packages[0].parent / "garbage")  # beside the others: under the reload root
    (pkg / "model.onnx").write_bytes(b"not a graph")
    reseal(pkg)
    return pkg


def test_reload_to_a_garbage_onnx_is_a_422(packages, garbage_onnx):
    settings = ServiceSettings(packages[0], engine="onnx", admin_token=TOKEN)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        body = _shape(c.post("/v1/admin/reload", json={"package": str(garbage_onnx)}, headers=AUTH), 422, "package")
        assert "model.onnx: not a loadable ONNX graph" in body["error"]
        assert str(garbage_onnx) not in body["error"]
        assert c.post("/v1/score", json=GOOD).status_code == 200


def test_start_up_with_a_bad_package_is_one_line_and_exit_2(garbage_onnx):
    result = CliRunner().invoke(cli_app, ["serve", str(garbage_onnx), "--engine", "onnx"], env={})
    assert result.exit_code == 2, result.output
    assert "model.onnx: not a loadable ONNX graph" in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") <= 1 or "error:" in result.output.splitlines()[0]


def test_an_unknown_http_parser_is_one_line_and_exit_2(packages):
    result = CliRunner().invoke(cli_app, ["serve", str(packages[0]), "--http", "spdy"], env={})
    assert result.exit_code == 2, result.output
    assert "--http must be 'auto', 'httptools' or 'h11', got 'spdy'" in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------------ 7. slow clients


@pytest.fixture(scope="module", params=["httptools", "h11"])
def slow_server(packages, request):
    srv = Server(packages[0], "--read-timeout", "1", "--http", request.param, token=None)
    yield srv
    srv.stop()


def _connect(srv) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=10)


def _response(s: socket.socket) -> tuple[str, bytes]:
    """(status line, body) of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += s.recv(4096)
    return head.split(b"\r\n")[0].decode(), body


@pytest.mark.slow
def test_a_client_stalling_in_its_headers_is_disconnected(slow_server):
    with _connect(slow_server) as s:
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        assert s.recv(1024) == b""  # closed by the server
        assert time.monotonic() - t0 < 5


@pytest.mark.slow
def test_a_kept_alive_connection_stalling_in_its_next_request_is_disconnected(slow_server):
    with _connect(slow_server) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _ = _response(s)
        assert status.startswith("HTTP/1.1 200")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        t0 = time.monotonic()
        assert s.recv(1024) == b""
        assert time.monotonic() - t0 < 5


@pytest.mark.slow
def test_a_client_stalling_in_its_body_gets_a_408(slow_server):
    with _connect(slow_server) as s:
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"user_id\": ")
        t0 = time.monotonic()
        status, body = _response(s)
        assert time.monotonic() - t0 < 5
    assert status.startswith("HTTP/1.1 408"), status
    assert json.loads(body)["field"] == "body"


@pytest.mark.slow
def test_a_slow_but_steady_request_still_succeeds(slow_server):
    body = json.dumps(GOOD).encode()
    with _connect(slow_server) as s:
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        time.sleep(0.5)  # half the read timeout between headers and body
        s.sendall(body)
        status, reply = _response(s)
    assert status.startswith("HTTP/1.1 200"), reply
