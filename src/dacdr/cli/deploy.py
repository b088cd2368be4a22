"""Deployment commands: package, export, serve, finetune."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from dacdr.cli.app import app, command_threads, console, user_errors


@app.command()
@user_errors
def package(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (model.safetensors, model.json, config.yaml)")],
    out: Annotated[Path, typer.Option(help="package directory to write")],
    history_len: Annotated[int | None, typer.Option(min=1, help="behaviours kept per user in the store "
                                                                 "(default: the model's max_len)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing package")] = False,
) -> None:
    """Build a versioned, checksummed model package with its id vocabularies and history store."""
    from dacdr.package import build_package

    build_package(run_dir, out, history_len=history_len, overwrite=overwrite, log=console.print)


@app.command()
@user_errors
def export(
    package_dir: Annotated[Path, typer.Argument(metavar="PACKAGE", help="a package directory")],
    format: Annotated[str, typer.Option("--format", help="onnx | torchscript")] = "onnx",
    out: Annotated[Path | None, typer.Option(help="output file (default: inside the package)")] = None,
) -> None:
    """Export a packaged model to ONNX or TorchScript (dynamic batch and sequence length)."""
    from dacdr.export import export_package

    path = export_package(package_dir, format, out)  # type: ignore[arg-type]
    console.print(f"wrote {path}")


@app.command()
@user_errors
def index(
    package_dir: Annotated[Path, typer.Argument(metavar="PACKAGE", help="a package directory")],
    engine: Annotated[str, typer.Option(help="torch | onnx: the engine that scores the pools")] = "torch",
    rank: Annotated[int, typer.Option(min=1, help="dimensions of the item vectors")] = 32,
    probes: Annotated[int, typer.Option(min=1, help="items scored exactly to place the user")] = 96,
    rerank: Annotated[int, typer.Option(min=1, help="best items by proxy re-scored exactly")] = 400,
    fit_users: Annotated[int, typer.Option(min=2, help="store users the factors are fitted on")] = 128,
) -> None:
    """Fit the retrieval stage of /v1/recommend for every item pool and save it beside the package."""
    import time

    from dacdr.serving.recommend import RetrievalConfig, build_index, save_indexes
    from dacdr.serving.scoring import Scorer

    if engine not in ("torch", "onnx"):
        raise ValueError(f"--engine must be 'torch' or 'onnx', got {engine!r}")
    cfg = RetrievalConfig(rank=rank, probes=probes, rerank=rerank, fit_users=fit_users)
    scorer = Scorer.load(package_dir, engine, 1)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    indexes = {d: build_index(scorer, d, cfg) for d in scorer.domains if len(scorer.pkg.item_pools.get(d, ())) > 0}
    if not indexes:
        raise ValueError(f"{package_dir}: the package holds no item pools (rebuild it with `dacdr package`)")
    path = save_indexes(scorer, indexes, cfg)
    for d, ix in indexes.items():
        console.print(f"{d}: {len(ix.items)} items, " + (f"rank {ix.factors.shape[1]}, fitted in {ix.fit_seconds:.1f} s"
                                                         if ix.retrieval else "scored exactly (small pool)"))
    console.print(f"wrote {path} in {time.perf_counter() - t0:.1f} s")


@app.command()
@user_errors
def serve(
    package_dir: Annotated[Path, typer.Argument(metavar="PACKAGE", help="a package directory")],
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    engine: Annotated[str, typer.Option(help="torch | onnx")] = "torch",
    threads: Annotated[int, typer.Option(min=1, help="intra-op threads per inference")] = 1,
    max_items: Annotated[int, typer.Option(min=1, help="most candidate items per request")] = 1000,
    max_body_bytes: Annotated[int, typer.Option(min=1024, help="largest accepted request body")] = 1 << 20,
    admin_token: Annotated[str | None, typer.Option(
        help="token for POST /v1/admin/reload, at least 16 characters (default: $DACDR_ADMIN_TOKEN; unset "
             "disables reload)")] = None,
    reload_root: Annotated[Path | None, typer.Option(
        help="reload by path only packages under this folder (default: the folder holding PACKAGE)")] = None,
    read_timeout: Annotated[float, typer.Option(min=0.1, help="seconds a client may take to send its request "
                                                              "headers, and its body")] = 10.0,
    workers: Annotated[int, typer.Option(min=1, help="worker processes (a reload reaches every one)")] = 1,
    inline: Annotated[bool | None, typer.Option(
        "--inline/--threadpool", help="score on the event loop, or in a thread pool (default: the fast route on "
                                      "the event loop, other routes in the pool)")] = None,
    fast_json: Annotated[bool, typer.Option("--fast-json/--std-json", help="orjson responses")] = True,
    fast_route: Annotated[bool, typer.Option("--fast-route/--fastapi-route",
                                             help="valid /v1/score bodies skip FastAPI's request machinery")] = True,
    score_threads: Annotated[int, typer.Option(min=0, help="fast route: requests scored at once per worker "
                                                           "(0: the default thread pool)")] = 0,
    history_cache: Annotated[int, typer.Option(min=0, help="store look-ups cached in memory (0: off)")] = 10_000,
    http: Annotated[str, typer.Option(help="HTTP parser: auto (httptools if installed), httptools or h11")] = "auto",
    onnx_graph: Annotated[str, typer.Option(help="--engine onnx: auto (DACDR as cached user-side + candidate-side "
                                                 "graphs when covered), split or single")] = "auto",
    user_cache: Annotated[int, typer.Option(min=0, help="split ONNX graphs: user-side results cached in "
                                                        "memory (0: off)")] = 2048,
    pin_workers: Annotated[bool, typer.Option("--pin-workers/--no-pin-workers",
                                              help="with --workers N: each worker on one CPU of its own")] = True,
    balance_connections: Annotated[bool, typer.Option(
        "--balance-connections/--no-balance-connections",
        help="with --workers N: a worker over its share of open connections asks a client to reconnect")] = True,
) -> None:
    """Serve a package over HTTP (FastAPI on uvicorn)."""
    import torch
    import uvicorn

    from dacdr.serving.app import ServiceSettings, create_app, header_timeout_protocol
    from dacdr.serving.scoring import Scorer

    if engine not in ("torch", "onnx"):
        raise ValueError(f"--engine must be 'torch' or 'onnx', got {engine!r}")
    settings = ServiceSettings(
        package=package_dir.resolve(), engine=engine, threads=threads, max_items=max_items,  # type: ignore[arg-type]
        max_body_bytes=max_body_bytes, admin_token=admin_token or os.environ.get("DACDR_ADMIN_TOKEN") or None,
        reload_root=reload_root, read_timeout_s=read_timeout,
        inline=inline, fast_json=fast_json, history_cache=history_cache,
        onnx_graph=onnx_graph, user_cache=user_cache, fast_route=fast_route,  # type: ignore[arg-type]
        score_threads=score_threads, pin_workers=pin_workers, balance_connections=balance_connections,
        workers=workers,
    )
    protocol = header_timeout_protocol(read_timeout, http)  # type: ignore[arg-type]
    torch.set_num_threads(threads)
    try:  # load, verify and warm up before binding the port: a bad package is one line and exit 2
        scorer = Scorer.load(package_dir, settings.engine, threads, settings.history_cache, settings.onnx_graph,
                             settings.user_cache)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001  (whatever a package makes fail, never a traceback)
        raise ValueError(f"{package_dir}: cannot be served ({type(e).__name__}: {e})") from e
    from rich.markup import escape

    graph = scorer.engine.info()
    note = f", graph {graph['graph']}" + (f" ({graph['split']})" if "split" in graph else "")
    console.print(escape(f"serving {package_dir} on http://{host}:{port} (engine {engine}{note}, {workers} worker(s))"))
    options = {"host": host, "port": port, "log_level": "warning", "timeout_keep_alive": 30,
               "limit_concurrency": 512, "http": protocol}
    if workers == 1:
        uvicorn.run(create_app(settings, scorer), **options)
        return
    del scorer  # checked here; every worker loads its own
    # Worker processes share a state directory (two-phase reload) and Prometheus' multiprocess directory;
    # both must exist before the first worker imports anything.
    with tempfile.TemporaryDirectory(prefix="dacdr-serve-") as state_dir:
        settings.state_dir = state_dir
        metrics_dir = Path(state_dir) / "metrics"
        metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        os.environ["DACDR_SERVE_SETTINGS"] = settings.to_env()
        uvicorn.run("dacdr.serving.app:app_from_env", factory=True, workers=workers, **options)


@app.command()
@user_errors
def finetune(
    base_run: Annotated[Path, typer.Argument(help="run directory of the trained base model")],
    data: Annotated[Path, typer.Option(help="dataset directory holding the base domains and the new one")],
    domain: Annotated[str, typer.Option(help="the new target domain")],
    out: Annotated[Path | None, typer.Option(help="run directory to write")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="default: the base run's")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="default: the base run's")] = None,
) -> None:
    """Add a new target domain to a trained model, training only its new rows and the attention projections."""
    from dacdr.recipes.finetune import finetune as run_finetune

    out = out or base_run.parent / f"{base_run.name}-finetune-{domain}"
    command_threads(None)
    report = run_finetune(base_run, data, domain, out, epochs=epochs, lr=lr, log=console.print)
    console.print(json.dumps({k: report[k] for k in ("trainable_parameters", "total_parameters",
                                                     "train_seconds", "before", "after")}, indent=1))
    console.print(f"wrote {out}")
