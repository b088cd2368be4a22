"""The FastAPI scoring service.

Routes: `POST /v1/score`, `POST /v1/score/batch`, `GET /v1/domains`, `GET /healthz`, `GET /readyz`,
`GET /metrics`, `POST /v1/admin/reload`. Every error, 404 / 405 / unparseable bodies included, has the JSON
body `{"error": "<field>: <message>", "field": "<field>"}`; bodies over the size limit are cut off while being
read (413), and a body not fully received within `read_timeout_s` is answered 408 (headers: the connection is
closed, `HeaderTimeoutH11`), so no slow client can hold a worker or a connection for long.

Reload builds and warms the new scorer in a worker thread, then swaps one reference. A request takes the
reference once when it starts, so in-flight requests finish on the old model and none fails meanwhile.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import numpy as np
import orjson
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from dacdr.package import PackageError, verify_package
from dacdr.serving.engines import USER_CACHE, EngineName, OnnxGraph
from dacdr.serving.explain import explain, refuse_unless_explainable
from dacdr.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from dacdr.serving.metrics import ServiceMetrics
from dacdr.serving.recommend import RetrievalConfig, attach_indexes, recommend
from dacdr.serving.scoring import RequestError, ScoreQuery, Scorer
from dacdr.serving.workers import POLL_SECONDS, ConnectionBalance, WorkerGroup, pin_process

Id = Annotated[StrictStr, Field(min_length=1, max_length=256)] | StrictInt
MAX_HISTORY = 1000
"""most history events one request may send; the model reads only its last `max_len` (documented cap)"""
MIN_TOKEN_CHARS = 16


@dataclass
class ServiceSettings:
    package: Path
    engine: EngineName = "torch"
    threads: int | None = 1
    """intra-op threads per inference; requests run concurrently in the thread pool"""
    max_items: int = 1000
    max_batch_users: int = 256
    max_body_bytes: int = 1 << 20
    admin_token: str | None = None
    reload_root: Path | None = None
    """packages reloadable by path must lie under this folder; default: the folder holding `package`"""
    read_timeout_s: float = 10.0
    """longest a client may take to send a request's headers, and its body"""

    def __post_init__(self) -> None:
        if self.admin_token is not None and len(self.admin_token) < MIN_TOKEN_CHARS:
            raise ValueError(f"admin token: at least {MIN_TOKEN_CHARS} characters, got {len(self.admin_token)}")
        if self.read_timeout_s <= 0:
            raise ValueError(f"read timeout: must be > 0 s, got {self.read_timeout_s}")
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    inline: bool | None = None
    """score on the event loop (True) or in FastAPI's thread pool (False); None: the fast route on the event loop
    (first come, first served, no thread hand-off: measured in docs/serving.md), the other routes in the pool"""
    fast_json: bool = True
    """encode responses with orjson (True) or FastAPI's `jsonable_encoder` + `json`"""
    fast_route: bool = True
    """answer a valid `POST /v1/score` without FastAPI's request machinery (`_FastScore`); needs `fast_json`"""
    score_threads: int = 0
    """fast route: at most this many requests scored at once per worker (0: anyio's default pool of 40)"""
    history_cache: int = 10_000
    """store look-ups kept in memory (LRU); 0 reads SQLite on every request"""
    onnx_graph: OnnxGraph = "auto"
    """ONNX engine: DACDR as cached user-side + candidate-side graphs (`auto`, `split`) or one graph (`single`)"""
    user_cache: int = USER_CACHE
    """split ONNX engine: user-side results kept in memory (LRU); 0 recomputes them on every request"""
    state_dir: str | None = None
    """shared directory of a worker group (`dacdr serve --workers N`, `dacdr.serving.workers`); None: one process"""
    reload_timeout: float = 600.0
    """seconds every worker may take to load and warm up a reloaded package"""
    workers: int = 1
    """worker processes of the group: `/readyz` answers 200 only once that many serve a model"""
    pin_workers: bool = True
    """with several workers: pin each to one CPU of those the server may use (`WorkerGroup.claim_cpu`)"""
    balance_connections: bool = True
    """with several workers: a worker over its share of open connections closes one after a fast-route
    response, so that the client reconnects (`ConnectionBalance`)"""

    def to_env(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_env(cls, text: str) -> ServiceSettings:
        data = json.loads(text)
        return cls(**(data | {"package": Path(data["package"]), "retrieval": RetrievalConfig(**data["retrieval"])}))


# ------------------------------------------------------------------------------------------ schemas


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HistoryEvent(_Body):
    item: Id
    behaviour: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    rating: Annotated[float, Field(allow_inf_nan=False)] | None = None


class ScoreRequest(_Body):
    user_id: Id
    domain: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    items: Annotated[list[Id], Field(min_length=1)]
    history: list[HistoryEvent] | None = Field(
        None, max_length=MAX_HISTORY,
        description="recent source behaviours, oldest first (only the last max_len are read); omitted: taken "
        "from the package's store",
    )
    explain: bool = Field(False, description="add the behaviours with the largest attention weights per item")


class RecommendRequest(_Body):
    user_id: Id
    domain: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    k: Annotated[int, Field(ge=1, le=1000)] = 10
    exclude: list[Id] | None = Field(None, description="items never to recommend")
    exclude_history: bool = Field(True, description="also leave out the items of the user's history")
    history: list[HistoryEvent] | None = None
    explain: bool = False
    exact: bool = Field(False, description="score the whole pool instead of the retrieval stage (slower)")


class BatchScoreRequest(_Body):
    requests: Annotated[list[ScoreRequest], Field(min_length=1)]


class ReloadRequest(_Body):
    package: str | None = Field(None, description="package directory; default: the one being served")


# ------------------------------------------------------------------------------------------ middleware


class _Limits:
    """Pure ASGI: body size limit (Content-Length and streamed bytes) and per-route metrics."""

    def __init__(self, app, settings: ServiceSettings, metrics: ServiceMetrics, routes: set[str]):
        self.app, self.settings, self.metrics, self.routes = app, settings, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500}
        limit = self.settings.max_body_bytes

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                resp = _error(413, "body", f"request body over the limit of {limit} bytes")
                await resp(scope, receive, send_wrapper)
                return
            seen = {"n": 0, "done": False}
            deadline = time.monotonic() + self.settings.read_timeout_s

            async def receive_wrapper():
                if seen["done"]:  # the body is in: later calls wait for a disconnect, without deadline
                    return await receive()
                try:
                    with anyio.fail_after(max(deadline - time.monotonic(), 0.0)):
                        message = await receive()
                except TimeoutError:
                    raise HTTPException(408, {"error": f"body: not received within "
                                                       f"{self.settings.read_timeout_s:g} s", "field": "body"}) from None
                if message["type"] == "http.request":
                    seen["n"] += len(message.get("body", b""))
                    seen["done"] = not message.get("more_body", False)
                    if seen["n"] > limit:
                        raise HTTPException(413, {"error": f"body: request body over the limit of {limit} bytes",
                                                  "field": "body"})
                return message

            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            # label by route template (bounded cardinality); a body refused before routing keeps its path
            path = getattr(scope.get("route"), "path", None) or (
                scope["path"] if scope.get("path") in self.routes else "unmatched")
            self.metrics.observe(scope.get("method", ""), path, status["code"], time.perf_counter() - t0)


class _FastScore:
    """The fast route, called by `_ServiceApp` before any of FastAPI's or Starlette's layers: a `POST /v1/score`
    whose body arrives within the size limit and the deadline, and which orjson parses and `ScoreRequest`
    accepts, is scored by the route's own handler, answered with orjson and counted in the metrics as `_Limits`
    counts it (measured in docs/serving.md). Everything else — another route, a body over the limit, late or
    cut off, one orjson or the schema refuses, an error while scoring — is handed to the FastAPI app with the
    body replayed exactly as it was received (a deadline that expired is raised again there), so every error is
    answered by the same code as before, `_Limits` included (and a failed fast attempt costs one more parse)."""

    def __init__(self, handler, settings: ServiceSettings, metrics: ServiceMetrics):
        self.handler, self.settings, self.metrics = handler, settings, metrics
        self.inline = settings.inline is not False
        self.limiter = anyio.CapacityLimiter(settings.score_threads) if settings.score_threads else None
        """at most `score_threads` requests scored at once (others wait on the event loop); None: anyio's pool"""

    @staticmethod
    def matches(scope) -> bool:
        return scope["type"] == "http" and scope["path"] == "/v1/score" and scope["method"] == "POST" and any(
            k == b"content-type" and v.startswith(b"application/json") for k, v in scope.get("headers", ()))

    async def __call__(self, scope, receive, send, fallback) -> None:
        t0 = time.perf_counter()
        limit = self.settings.max_body_bytes
        received: list[dict] = []
        receive_error: BaseException | None = None
        size, complete = 0, False
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is None or (declared.isdigit() and int(declared) <= limit):
            try:
                async with asyncio.timeout(self.settings.read_timeout_s):  # `_Limits`' deadline, cheaper
                    while True:
                        message = await receive()
                        received.append(message)
                        if message["type"] != "http.request":
                            break
                        size += len(message.get("body", b""))
                        if size > limit or not message.get("more_body", False):
                            complete = size <= limit
                            break
            except TimeoutError as e:
                receive_error = e  # raised again inside `_Limits`, which answers 408 as before
        if complete:
            try:
                req = ScoreRequest.model_validate(orjson.loads(b"".join(m.get("body", b"") for m in received)))
                result = self.handler(req) if self.inline else await anyio.to_thread.run_sync(
                    self.handler, req, limiter=self.limiter)
                payload = orjson.dumps(result)
            except Exception:  # noqa: BLE001, S110  (any failure: FastAPI's route answers it as before)
                pass
            else:
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
                if _BALANCE is not None and _BALANCE.over_share():
                    headers.append((b"connection", b"close"))  # the client reconnects, likely to a less busy worker
                    self.metrics.rebalanced()
                try:
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send({"type": "http.response.body", "body": payload})
                finally:
                    self.metrics.observe("POST", "/v1/score", 200, time.perf_counter() - t0)
                return

        async def replay():
            if received:
                return received.pop(0)
            if receive_error is not None:
                raise receive_error
            return await receive()

        await fallback(scope, replay, send)


class _ServiceApp(FastAPI):
    """FastAPI with the fast route (`_FastScore`) in front of its middleware stack."""

    fast: _FastScore | None = None

    async def __call__(self, scope, receive, send) -> None:
        fast = self.fast
        if fast is not None and fast.matches(scope):
            return await fast(scope, receive, send, super().__call__)
        return await super().__call__(scope, receive, send)


HEADER_TIMEOUT_ENV = "DACDR_HEADER_TIMEOUT_S"
_BALANCE: ConnectionBalance | None = None
"""this worker's connection counts, shared with its group (`--balance-connections`); None: not balanced"""


class _HeaderDeadline(asyncio.Protocol):
    """A deadline for request headers on top of a uvicorn HTTP protocol (uvicorn has none): a connection that
    opens, or starts a next request, and does not complete its headers within `$DACDR_HEADER_TIMEOUT_S`
    seconds (default 10) is closed. The setting travels in the environment so that worker processes inherit
    it. Both uvicorn protocols create `self.cycle` when a request's headers are complete."""

    _timer: asyncio.TimerHandle | None = None
    _armed_cycle: object = None
    _balance: ConnectionBalance | None = None
    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def _arm(self) -> None:
        self._disarm()
        self._armed_cycle = self.cycle
        self._timer = self.loop.call_later(float(os.environ.get(HEADER_TIMEOUT_ENV, "10")), self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.cycle is self._armed_cycle and not self.transport.is_closing():  # no request began meanwhile
            self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        self._balance = _BALANCE  # the one this connection was counted in (a reload does not change it)
        if self._balance is not None:
            self._balance.opened()

    def data_received(self, data: bytes) -> None:
        if self._timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of a next request on a kept-alive connection
        super().data_received(data)
        if self.cycle is not self._armed_cycle:
            self._disarm()  # headers complete: the body has its own deadline (`_Limits`)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._balance is not None:
            self._balance.closed()
            self._balance = None
        super().connection_lost(exc)


class HeaderTimeoutH11(_HeaderDeadline, H11Protocol):
    """uvicorn's pure-Python h11 protocol with the header deadline."""


try:  # httptools' C parser (uvicorn[standard]); h11 is the fallback
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover
    HttpToolsProtocol = None

if HttpToolsProtocol is not None:

    class HeaderTimeoutHttpTools(_HeaderDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol with the header deadline (module level: workers unpickle it)."""


HttpParser = Literal["auto", "httptools", "h11"]


def header_timeout_protocol(seconds: float, parser: HttpParser = "auto") -> type[asyncio.Protocol]:
    """The protocol class for `uvicorn.run(http=...)`, with `seconds` as the header deadline: httptools' C
    parser (`auto` when it is installed; measured in docs/serving.md) or the pure-Python h11."""
    if parser not in ("auto", "httptools", "h11"):
        raise ValueError(f"--http must be 'auto', 'httptools' or 'h11', got {parser!r}")
    os.environ[HEADER_TIMEOUT_ENV] = str(seconds)
    if parser == "h11" or (parser == "auto" and HttpToolsProtocol is None):
        return HeaderTimeoutH11
    if HttpToolsProtocol is None:
        raise ValueError("--http httptools needs the httptools package (pip install httptools)")
    return HeaderTimeoutHttpTools


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {message}", "field": field}, status_code=status)


_UNION_TAG = re.compile(r"^(constrained-)?(str|int|float|bool)$|\[")


def _field_of(loc: tuple) -> str:
    """`("body", "history", 0, "item", "constrained-str")` -> `history[0].item` (union tags dropped)."""
    parts = [p for p in loc if p != "body" and not (isinstance(p, str) and _UNION_TAG.search(p))] or ["body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# ------------------------------------------------------------------------------------------ the app


class ServiceState:
    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.scorer: Scorer | None = None
        self.reload_lock = asyncio.Lock()
        self.group = WorkerGroup(settings.state_dir) if settings.state_dir else None
        self.generation = 0
        self.prepared: tuple[int, Scorer | None] = (0, None)
        """a worker group's proposal loaded here and waiting for the commit: (generation, scorer)"""

    def load(self, path: Path) -> Scorer:
        s = self.settings
        scorer = Scorer.load(path, s.engine, s.threads, s.history_cache, s.onnx_graph, s.user_cache)
        attach_indexes(scorer, self.settings.retrieval, log=print)
        return scorer

    def swap(self, scorer: Scorer, path: Path) -> None:
        self.scorer = scorer  # one reference assignment: the atomic swap
        self.settings.package = path
        self.metrics.serving(scorer.version, scorer.pkg.description["name"], scorer.engine.name)

    async def follow_group(self) -> None:
        """Worker group: load proposals when they appear, swap on commit (polled every few milliseconds)."""
        group = self.group
        assert group is not None
        while True:
            await asyncio.sleep(POLL_SECONDS)
            prop = group.proposal()
            if (prop and prop.number > max(self.generation, self.prepared[0])
                    and not group.aborted(prop.number)):
                self.prepared = (prop.number, None)
                try:
                    scorer = await anyio.to_thread.run_sync(self.load, Path(prop.package))
                except Exception as e:  # noqa: BLE001  (reported to the reloading worker, which answers 422)
                    group.ready(prop.number, f"{type(e).__name__}: {e}")
                else:
                    self.prepared = (prop.number, scorer)
                    group.ready(prop.number)
            cur = group.committed()
            if cur and cur.number > self.generation:
                number, scorer = self.prepared
                if number != cur.number or scorer is None:  # joined after the proposal: load the committed one
                    scorer = await anyio.to_thread.run_sync(self.load, Path(cur.package))
                self.swap(scorer, Path(cur.package))
                self.generation, self.prepared = cur.number, (0, None)
                group.report(cur.number, scorer.version)


def app_from_env() -> FastAPI:
    """The app of one worker of `dacdr serve --workers N` (uvicorn factory; settings in $DACDR_SERVE_SETTINGS)."""
    return create_app(ServiceSettings.from_env(os.environ["DACDR_SERVE_SETTINGS"]))


def create_app(settings: ServiceSettings, scorer: Scorer | None = None) -> FastAPI:
    """The app; `scorer`, when given, is the already loaded package (`dacdr serve` loads it before binding,
    so a bad package is one error line and a non-zero exit, not a traceback from the server's start-up)."""
    state = ServiceState(settings)
    reload_root = (settings.reload_root or Path(settings.package).resolve().parent).resolve()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
        group = state.group
        if group is None:
            if scorer is not None:  # loaded by `dacdr serve` before binding; the retrieval index comes here
                await anyio.to_thread.run_sync(lambda: attach_indexes(scorer, settings.retrieval, log=print))
            state.swap(scorer or await anyio.to_thread.run_sync(state.load, settings.package), settings.package)
            yield
            return
        if settings.pin_workers and hasattr(os, "sched_setaffinity"):
            pin_process(group.claim_cpu(sorted(os.sched_getaffinity(0))))
        global _BALANCE
        if settings.balance_connections:
            _BALANCE = ConnectionBalance(group.dir)
        group.report(-1, None)  # a member from now on: a reload waits for this worker too
        committed = group.committed()
        path = Path(committed.package) if committed else settings.package
        state.swap(await anyio.to_thread.run_sync(state.load, path), path)
        state.generation = committed.number if committed else 0
        group.report(state.generation, state.scorer.version)
        follower = asyncio.create_task(state.follow_group())
        try:
            yield
        finally:
            follower.cancel()
            group.leave()
            if _BALANCE is not None:
                _BALANCE.close()
                _BALANCE = None
            state.metrics.process_exited(os.getpid())

    app = _ServiceApp(title="dacdr scoring service", lifespan=lifespan)
    app.state.service = state
    routes: set[str] = set()  # filled once the routes below exist
    if settings.fast_route and settings.fast_json:  # in front: its own size limit, deadline and metrics
        app.fast = _FastScore(lambda req: score(req), settings, state.metrics)  # noqa: PLW0108
    app.add_middleware(_Limits, settings=settings, metrics=state.metrics, routes=routes)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": ("body",), "msg": "invalid body"}
        field = _field_of(tuple(first.get("loc", ("body",))))
        msg = first.get("msg", "invalid")
        if sum(_field_of(tuple(e.get("loc", ()))) == field for e in errs) > 1:
            msg = "; or ".join(e.get("msg", "") for e in errs if _field_of(tuple(e.get("loc", ()))) == field)
        if first.get("type") == "json_invalid":
            field, msg = "body", f"not valid JSON ({first.get('ctx', {}).get('error', msg)})"
            errs = []
        body = {"error": f"{field}: {msg}", "field": field,
                "errors": [{"field": _field_of(tuple(e.get("loc", ()))), "message": e.get("msg")} for e in errs[:20]]}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException and routing's 404 / 405
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.detail, dict):
            return JSONResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
        if exc.status_code == 404:
            return _error(404, "path", f"no route {request.url.path!r}")
        if exc.status_code == 405:
            return JSONResponse({"error": f"method: {request.method} is not allowed on {request.url.path}",
                                 "field": "method"}, status_code=405, headers=exc.headers)
        if exc.status_code == 400:  # FastAPI could not parse the body (e.g. an integer over 4,300 digits)
            return _error(400, "body", "not parseable JSON (too deeply nested, or a number too large)")
        return _error(exc.status_code, "request", str(exc.detail))

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        return _error(422, exc.field, exc.message)

    def current() -> Scorer:
        scorer = state.scorer
        if scorer is None:
            raise HTTPException(503, {"error": "service: model not loaded yet", "field": "service"})
        return scorer

    def check_items(n: int, where: str) -> None:
        if n > settings.max_items:
            raise RequestError(f"{where}items", f"at most {settings.max_items} items per request, got {n}")

    def with_explanations(scorer: Scorer, q: ScoreQuery, result: dict[str, Any]) -> dict[str, Any]:
        item_idx = np.fromiter((scorer.item_vocab.lookup(i) for i in q.items), np.int64, len(q.items))
        domain_level, per_item = explain(scorer, scorer.resolve(q), scorer.domain_row(q), item_idx)
        result["explanations"] = {"domain_level": domain_level,
                                  "items": [{"item": i, "item_level": e} for i, e in zip(q.items, per_item,
                                                                                         strict=True)]}
        return result

    def score(req: ScoreRequest) -> dict[str, Any]:
        check_items(len(req.items), "")
        scorer = current()
        if req.explain:
            refuse_unless_explainable(scorer)
        q = ScoreQuery(req.user_id, req.domain, req.items,
                       None if req.history is None else [e.model_dump() for e in req.history])
        result = scorer.score([q])[0]
        if req.explain:
            with_explanations(scorer, q, result)
        state.metrics.add_items(len(req.items))
        return result

    def recommend_route(req: RecommendRequest) -> dict[str, Any]:
        scorer = current()
        if req.explain:
            refuse_unless_explainable(scorer)
        q = ScoreQuery(req.user_id, req.domain, [],
                       None if req.history is None else [e.model_dump() for e in req.history])
        result = recommend(scorer, q, req.k, req.exclude, req.exclude_history, req.exact)
        resolved, domain_row, item_idx = result.pop("_resolved"), result.pop("_domain_row"), result.pop("_item_idx")
        if req.explain:
            domain_level, per_item = explain(scorer, resolved, domain_row, item_idx)
            result["explanations"] = {"domain_level": domain_level}
            for entry, e in zip(result["items"], per_item, strict=True):
                entry["item_level"] = e
        state.metrics.add_items(result["retrieval"]["scored_exactly"])
        return result

    def score_batch(req: BatchScoreRequest) -> dict[str, Any]:
        if len(req.requests) > settings.max_batch_users:
            raise RequestError("requests", f"at most {settings.max_batch_users} users per batch, "
                                           f"got {len(req.requests)}")
        total = 0
        for i, r in enumerate(req.requests):
            check_items(len(r.items), f"requests[{i}].")
            total += len(r.items)
        if total > settings.max_items * 8:
            raise RequestError("requests", f"at most {settings.max_items * 8} items per batch, got {total}")
        scorer = current()
        queries = [ScoreQuery(r.user_id, r.domain, r.items,
                              None if r.history is None else [e.model_dump() for e in r.history], f"requests[{i}].")
                   for i, r in enumerate(req.requests)]
        for i, r in enumerate(req.requests):
            if r.explain:
                refuse_unless_explainable(scorer, f"requests[{i}].")
        results = scorer.score(queries)
        for r, q, res in zip(req.requests, queries, results, strict=True):
            if r.explain:
                with_explanations(scorer, q, res)
        state.metrics.add_items(total)
        return {"results": results, "model_version": scorer.version}

    def post(path: str, handler, body: type) -> None:
        """Register a scoring route: run on the event loop (`inline`, no thread hand-off: the work is short
        and CPU-bound) or in FastAPI's thread pool; answer with orjson (`fast_json`) or FastAPI's encoder."""

        def run(req):
            result = handler(req)
            return Response(orjson.dumps(result), media_type="application/json") if settings.fast_json else result

        async def on_loop(req):
            return run(req)

        def in_pool(req):
            return run(req)

        endpoint = on_loop if settings.inline is True else in_pool
        endpoint.__annotations__ = {"req": body}
        endpoint.__name__ = handler.__name__
        app.post(path)(endpoint)

    post("/v1/score", score, ScoreRequest)
    post("/v1/recommend", recommend_route, RecommendRequest)
    post("/v1/score/batch", score_batch, BatchScoreRequest)

    @app.get("/v1/domains")
    def domains() -> dict[str, Any]:
        scorer = current()
        return {"domains": scorer.pkg.domains, "model_version": scorer.version, "task": scorer.spec.task}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        scorer = state.scorer
        if scorer is None:
            return JSONResponse({"ready": False, "worker": os.getpid()}, status_code=503)
        group = {}
        if state.group is not None:  # a host is ready when all its workers are (a balancer routes to the host)
            serving = sum(m.get("version") is not None for m in state.group.members().values())
            group = {"workers_ready": serving, "workers": settings.workers}
            if serving < settings.workers:
                return JSONResponse({"ready": False, "worker": os.getpid(), **group}, status_code=503)
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return JSONResponse({"ready": True, "model_version": scorer.version, "engine": scorer.engine.name,
                             "worker": os.getpid(), "cpus": cpus, **group, **scorer.engine.info()})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.post("/v1/admin/reload")
    async def reload(
        req: ReloadRequest | None = None, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        if not settings.admin_token:
            raise HTTPException(403, {"error": "authorization: reload is disabled (no admin token configured)",
                                      "field": "authorization"})
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                  settings.admin_token.encode()):
            raise HTTPException(401, {"error": "authorization: missing or wrong admin token (expected "
                                               "'Authorization: Bearer <token>')", "field": "authorization"},
                                headers={"WWW-Authenticate": "Bearer"})
        path = Path(req.package) if req and req.package else settings.package
        if req and req.package and not path.resolve().is_relative_to(reload_root):
            state.metrics.reload("failed")
            raise HTTPException(422, {"error": "package: not under the reload root set by the operator "
                                               "(--reload-root)", "field": "package"})
        if state.group is not None:
            return await reload_group(path.resolve())
        async with state.reload_lock:
            old = state.scorer
            t0 = time.perf_counter()
            try:
                new = await anyio.to_thread.run_sync(state.load, path)
            except (PackageError, FileNotFoundError, ValueError) as e:
                state.metrics.reload("failed")
                raise HTTPException(422, {"error": f"package: {e}", "field": "package"}) from None
            except Exception as e:  # noqa: BLE001  (the old model keeps serving; the client gets a message)
                state.metrics.reload("failed")
                raise HTTPException(500, {"error": f"package: could not be loaded ({type(e).__name__}: {e})",
                                          "field": "package"}) from None
            state.swap(new, path)
            state.metrics.reload("ok")
        return {"previous_version": old.version if old else None, "model_version": new.version,
                "seconds": round(time.perf_counter() - t0, 3)}

    async def reload_group(path: Path) -> dict[str, Any]:
        """Two-phase reload of every worker (`dacdr.serving.workers`): all load, then all swap, or none."""
        group = state.group
        assert group is not None
        old, t0 = state.scorer, time.perf_counter()
        try:
            await anyio.to_thread.run_sync(verify_package, path)  # a bad path fails here, before any worker loads
        except (PackageError, FileNotFoundError, ValueError) as e:
            state.metrics.reload("failed")
            raise HTTPException(422, {"error": f"package: {e}", "field": "package"}) from None

        def two_phase() -> tuple[int, dict[int, str], dict[int, dict]]:
            with group.lock():
                generation = group.propose(str(path))
                answers = group.wait_ready(generation, settings.reload_timeout)
                if any(a != "ok" for a in answers.values()):
                    group.abort(generation)
                    return generation, answers, {}
                group.commit(generation, str(path))
                return generation, answers, group.wait_switched(generation, 30.0)

        async with state.reload_lock:
            generation, answers, members = await anyio.to_thread.run_sync(two_phase)
        failed = {pid: a for pid, a in answers.items() if a != "ok"}
        if failed:
            state.metrics.reload("failed")
            detail = "; ".join(f"worker {pid}: {a}" for pid, a in sorted(failed.items()))
            raise HTTPException(422, {"error": f"package: not loaded by every worker, none switched ({detail})",
                                      "field": "package"})
        state.metrics.reload("ok")
        versions = sorted({m.get("version") for m in members.values()})
        return {"previous_version": old.version if old else None, "model_version": versions[0] if len(versions) == 1
                else versions, "seconds": round(time.perf_counter() - t0, 3), "generation": generation,
                "workers": len(members)}

    routes.update(getattr(r, "path", "") for r in app.routes)
    return app
