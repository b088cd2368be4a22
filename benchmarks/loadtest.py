"""Load test of `dacdr serve` on loopback: one user x 100 candidate items, concurrency 1 / 8 / 32.

For each engine (eager PyTorch, ONNX Runtime) a fresh server is started on a free port; an async httpx
client runs closed-loop workers (each sends its next request when the previous answer arrives) for a fixed
number of requests per level, after a warm-up. A final phase at concurrency 8 reloads the package in the
middle of the load. Every non-200 answer or transport error counts as an error.

    python benchmarks/loadtest.py PACKAGE --requests 400 --out runs/loadtest.json

Client and server share the machine: on a 2-core box the client's own CPU use is part of the latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

TOKEN = "loadtest-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(package: Path, engine: str, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-c", "from dacdr.cli import main; main()", "serve", str(package), "--port", str(port),
           "--engine", engine, "--threads", str(threads)]
    proc = subprocess.Popen(cmd, env=dict(os.environ, DACDR_ADMIN_TOKEN=TOKEN),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise TimeoutError(f"{engine} server not ready")


def payloads(package: Path, n_items: int, n: int, seed: int = 0) -> tuple[list[dict], str]:
    """Requests for random store users and random candidate items of one target domain."""
    from dacdr.package import load_package

    pkg = load_package(package)
    rng = random.Random(seed)
    target = next(d["domain"] for d in pkg.domains if d["role"] == "target")
    users = pkg.vocabs["user"].values
    items = pkg.vocabs["item"].values
    return [{"user_id": rng.choice(users), "domain": target, "items": rng.sample(items, n_items)}
            for _ in range(n)], target


async def run_level(url: str, reqs: list[dict], concurrency: int, reload_package: Path | None = None) -> dict:
    latencies: list[float] = []
    errors = 0
    queue = list(reqs)
    reload_result: dict = {}

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while queue:
            body = queue.pop()
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/score", json=body)
                ok = r.status_code == 200 and len(r.json()["scores"]) == len(body["items"])
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t0)
            errors += not ok

    async def reloader(client: httpx.AsyncClient) -> None:
        while len(queue) > len(reqs) // 2:
            await asyncio.sleep(0.01)
        r = await client.post("/v1/admin/reload", json={"package": str(reload_package)},
                              headers={"authorization": f"Bearer {TOKEN}"}, timeout=120)
        reload_result.update(status=r.status_code, **(r.json() if r.status_code == 200 else {}))

    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        tasks = [worker(client) for _ in range(concurrency)]
        if reload_package is not None:
            tasks.append(reloader(client))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    out = {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
           "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
           "mean_ms": round(float(lat.mean()), 2), "throughput_rps": round(len(latencies) / wall, 1)}
    if reload_package is not None:
        out["reload"] = reload_result
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", type=Path)
    ap.add_argument("--reload-package", type=Path, default=None, help="package swapped in during load "
                                                                       "(default: the same package)")
    ap.add_argument("--engines", default="torch,onnx")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="server intra-op threads per inference")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    reqs, domain = payloads(args.package, args.items, args.requests)
    results: dict = {"package": str(args.package), "items": args.items, "domain": domain,
                     "threads": args.threads, "cpus": os.cpu_count(), "engines": {}}
    for engine in args.engines.split(","):
        proc, url = start_server(args.package, engine, args.threads)
        try:
            asyncio.run(run_level(url, reqs[:50], 4))  # warm-up, not reported
            levels = [asyncio.run(run_level(url, reqs, int(c))) for c in args.levels.split(",")]
            levels.append(asyncio.run(run_level(url, reqs, 8, args.reload_package or args.package)) | {
                "phase": "reload during load"})
            results["engines"][engine] = levels
        finally:
            proc.terminate()
            proc.wait(10)
        for row in levels:
            print(engine, json.dumps(row))
    print("\n| engine | concurrency | requests | errors | p50 ms | p99 ms | req/s |\n|---|---|---|---|---|---|---|")
    for engine, levels in results["engines"].items():
        for r in levels:
            label = f"{r['concurrency']}" + (" + reload" if "reload" in r else "")
            print(f"| {engine} | {label} | {r['requests']} | {r['errors']} | {r['p50_ms']} | {r['p99_ms']} | "
                  f"{r['throughput_rps']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
