"""Load test of `dacdr serve`: one user x 100 candidate items, concurrency 1 / 8 / 32, wrk and a Python client.

For each configuration (engine x server options) a fresh server is started, pinned with `taskset` to the
server CPUs; the load generators run pinned to the client CPUs:

1. cold: right after start, one pass of wrk (concurrency 8) over bodies no request has used yet;
2. wrk (a Lua script drawing from 500 different bodies: random store users, random items of a target pool)
   for `--duration` seconds at each concurrency level;
3. the async httpx client (closed loop) for `--requests` requests at each level, as a second reference;
4. the httpx client at concurrency 8 while the package is reloaded half-way (every non-200 is an error).

    python benchmarks/loadtest.py PKG --reload-package PKG2 --out runs/loadtest.json \\
        --configs "torch:--engine torch" "onnx:--engine onnx" "onnx 2 workers@0,1:--engine onnx --workers 2"

`--ablation ROUNDS` instead starts every configuration's server at once and runs wrk on them in turn, round
after round (the first configuration is the reference of the ratios); every round opens new connections, so
with several workers each round draws a new split of them between the workers (medians and the worst round).

Every wrk row also records the server's CPU time per answered request (user + system of all its processes,
from /proc), a measure of the work per request that the box's other load and the luck of the connection split
move much less than latency or throughput.

wrk is required (Debian: `apt-get install wrk`). Every row records the box's load average at its start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

TOKEN = "loadtest-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpus: str | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` and all its descendants (workers), from /proc (Linux)."""
    parent, times = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        times[int(entry)] = int(fields[11]) + int(fields[12])
    tree, frontier = {pid}, [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    return sum(times.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def config_name(name: str, default_cpus: str | None) -> tuple[str, str | None, str | None, Path | None]:
    """`NAME[@CPUS][%SRC][#PACKAGE]` -> (name, the server's CPUs, a source tree to import dacdr from, e.g. `git
    archive` of an earlier commit, so that code versions can be compared in one interleaved run, and a package
    served instead of the positional one, e.g. another release's model of the same data)."""
    name, _, package = name.partition("#")
    name, _, src = name.partition("%")
    name, _, cpus = name.partition("@")
    return name, cpus or default_cpus, src or None, Path(package) if package else None


def start_server(package: Path, args: list[str], cpus: str | None,
                 src: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = pinned(cpus, [sys.executable, "-c", "from dacdr.cli import main; main()", "serve", str(package),
                        "--port", str(port), *args])
    env = dict(os.environ, DACDR_ADMIN_TOKEN=TOKEN)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1500):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {shlex.join(cmd)}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    stop_server(proc)
    raise TimeoutError("server not ready")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def payloads(package: Path, n_items: int, n: int, seed: int) -> list[dict]:
    """Requests for random store users and random candidate items of the first target domain's pool."""
    from dacdr.package import load_package

    pkg = load_package(package)
    rng = random.Random(seed)
    target = next(d["domain"] for d in pkg.domains if d["role"] == "target")
    values = pkg.vocabs["item"].values
    pool = [values[i - 2] for i in pkg.item_pools.get(target, [])] or values
    users = pkg.vocabs["user"].values
    return [{"user_id": rng.choice(users), "domain": target, "items": rng.sample(pool, min(n_items, len(pool)))}
            for _ in range(n)]


def lua_script(bodies: list[dict], once: bool) -> str:
    """wrk script: POST /v1/score with a random body (or each body once, then stop)."""
    rows = ",\n".join("[[" + json.dumps(b) + "]]" for b in bodies)
    pick = "i = i + 1; return wrk.format(nil, '/v1/score', nil, bodies[(i - 1) % #bodies + 1])" if once else \
        "return wrk.format(nil, '/v1/score', nil, bodies[math.random(#bodies)])"
    stop = "done = 0\nresponse = function() done = done + 1; if done >= #bodies then wrk.thread:stop() end end\n" \
        if once else ""
    return (f"bodies = {{\n{rows}\n}}\ni = 0\nwrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/json'\n"
            f"request = function() {pick} end\n{stop}")


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(url: str, script: Path, concurrency: int, duration: float, cpus: str | None,
            server_pid: int | None = None) -> dict:
    """One wrk run; with `server_pid`, also the server's CPU time per answered request (all its processes)
    and wrk's own, in µs."""
    cmd = pinned(cpus, ["wrk", "-t1", f"-c{concurrency}", f"-d{int(duration)}s", "--latency", "--timeout", "10s",
                        "-s", str(script), url])
    load = os.getloadavg()[0]
    cpu0 = tree_cpu_s(server_pid) if server_pid else 0.0
    own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1 = tree_cpu_s(server_pid) if server_pid else 0.0
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    n = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    row = {"client": "wrk", "concurrency": concurrency, "requests": n, "errors": errors,
           "p50_ms": round(_ms(lat["50"]), 2), "p99_ms": round(_ms(lat["99"]), 2),
           "throughput_rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "load1": load}
    if server_pid and n:
        wrk_s = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
        row |= {"server_cpu_us": round((cpu1 - cpu0) / n * 1e6), "wrk_cpu_us": round(wrk_s / n * 1e6)}
    return row


async def run_python(url: str, reqs: list[dict], concurrency: int, reload_package: Path | None = None) -> dict:
    latencies: list[float] = []
    errors = 0
    queue = list(reqs)
    reload_result: dict = {}
    load = os.getloadavg()[0]

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
                              headers={"authorization": f"Bearer {TOKEN}"}, timeout=600)
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
    out = {"client": "python", "concurrency": concurrency, "requests": len(latencies), "errors": errors,
           "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
           "throughput_rps": round(len(latencies) / wall, 1), "load1": load}
    if reload_package is not None:
        out["reload"] = reload_result
        out["errors"] += reload_result.get("status") != 200
    return out


def run_config(name: str, server_args: list[str], args: argparse.Namespace, bodies: list[dict],
               cold_bodies: list[dict], tmp: Path) -> list[dict]:
    random_lua, cold_lua = tmp / "random.lua", tmp / f"cold-{abs(hash(name))}.lua"
    random_lua.write_text(lua_script(bodies, once=False))
    cold_lua.write_text(lua_script(cold_bodies, once=True))
    name, cpus, src, package = config_name(name, args.server_cpus)
    proc, url = start_server(package or args.package, server_args, cpus, src)
    rows = []
    try:
        # wrk keeps its clock running after the script stops its thread: the pass's req/s is not meaningful
        rows.append(run_wrk(url, cold_lua, 8, 10, args.client_cpus) | {"phase": "cold", "throughput_rps": None})
        for c in args.levels:
            rows.append(run_wrk(url, random_lua, c, args.duration, args.client_cpus, proc.pid) | {"phase": "steady"})
        python = [sys.executable, __file__, "--python-client", url, "--bodies", str(tmp / "bodies.json")]
        for c in args.levels:
            rows.append(json.loads(subprocess.run(pinned(args.client_cpus, [*python, "--concurrency", str(c)]),
                                                  capture_output=True, text=True, check=True).stdout)
                        | {"phase": "steady"})
        if args.reload_package:
            cmd = [*python, "--concurrency", "8", "--reload", str(args.reload_package)]
            rows.append(json.loads(subprocess.run(pinned(args.client_cpus, cmd), capture_output=True, text=True,
                                                  check=True).stdout) | {"phase": "reload"})
    finally:
        stop_server(proc)
    for r in rows:
        r["config"] = name
        print(json.dumps(r), flush=True)
    return rows


def _metric(url: str, name: str) -> float:
    """The sum of a Prometheus series over the server's workers (`/metrics`)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def ablation(args: argparse.Namespace, bodies: list[dict], tmp: Path) -> list[dict]:
    """Every configuration's server up at once; wrk at each level, configurations interleaved round after
    round, so that a change in the box's load hits all of them alike. Medians over rounds, and ratios
    against the first configuration (the one without the levers)."""
    script = tmp / "random.lua"
    script.write_text(lua_script(bodies, once=False))
    servers = []
    try:
        for spec in args.configs:
            name, _, server_args = spec.partition(":")
            name, cpus, src, package = config_name(name, args.server_cpus)
            servers.append((name, *start_server(package or args.package, shlex.split(server_args), cpus, src)))
        for _, _, url in servers:  # warm every server the same way
            run_wrk(url, script, 8, 2, args.client_cpus)
        samples: dict[tuple[str, int], list[dict]] = {}
        for rnd in range(args.ablation):
            for c in args.levels:
                order = servers if rnd % 2 == 0 else servers[::-1]
                for name, proc, url in order:
                    samples.setdefault((name, c), []).append(run_wrk(url, script, c, args.duration, args.client_cpus,
                                                                     proc.pid))
        rebalanced = {name: _metric(url, "dacdr_connections_rebalanced_total") for name, _, url in servers}
    finally:
        for _, proc, _ in servers:
            stop_server(proc)
    rows = []
    for (name, c), runs in samples.items():
        rows.append({"config": name, "concurrency": c, "rounds": len(runs),
                     "requests": sum(r["requests"] for r in runs), "errors": sum(r["errors"] for r in runs),
                     "p50_ms": round(float(np.median([r["p50_ms"] for r in runs])), 2),
                     "p99_ms": round(float(np.median([r["p99_ms"] for r in runs])), 2),
                     "throughput_rps": round(float(np.median([r["throughput_rps"] for r in runs])), 1),
                     "p99_ms_worst": max(r["p99_ms"] for r in runs),
                     "throughput_rps_worst": min(r["throughput_rps"] for r in runs),
                     "server_cpu_us": round(float(np.median([r["server_cpu_us"] for r in runs]))),
                     "rebalanced_whole_run": rebalanced[name],
                     "load1": float(np.mean([r["load1"] for r in runs]))})
    base = {r["concurrency"]: r for r in rows if r["config"] == rows[0]["config"]}
    for r in rows:
        b = base[r["concurrency"]]
        r["rps_ratio"] = round(r["throughput_rps"] / b["throughput_rps"], 2)
        r["p99_ratio"] = round(r["p99_ms"] / b["p99_ms"], 2)
        print(json.dumps(r), flush=True)
    return rows


def ablation_table(rows: list[dict]) -> str:
    out = ["| config | concurrency | rounds | errors | p50 ms | p99 ms (worst) | req/s (worst) | req/s ratio | "
           "p99 ratio | server CPU µs/req | load |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["concurrency"]):
        out.append(f"| {r['config']} | {r['concurrency']} | {r['rounds']} | {r['errors']} | {r['p50_ms']} | "
                   f"{r['p99_ms']} ({r['p99_ms_worst']}) | {r['throughput_rps']} ({r['throughput_rps_worst']}) | "
                   f"{r['rps_ratio']} | {r['p99_ratio']} | {r['server_cpu_us']} | {r['load1']:.1f} |")
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    out = ["| config | client | phase | concurrency | requests | errors | p50 ms | p99 ms | req/s | "
           "server CPU µs/req | load |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rps = "—" if r["throughput_rps"] is None else r["throughput_rps"]
        out.append(f"| {r['config']} | {r['client']} | {r['phase']} | {r['concurrency']} | {r['requests']} | "
                   f"{r['errors']} | {r['p50_ms']} | {r['p99_ms']} | {rps} | {r.get('server_cpu_us', '—')} | "
                   f"{r['load1']:.1f} |")
    return "\n".join(out)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through `finally`: the server stops
    if "--python-client" in sys.argv:  # a subprocess, so that it can be pinned apart from the server
        ap = argparse.ArgumentParser()
        ap.add_argument("--python-client")
        ap.add_argument("--bodies", type=Path)
        ap.add_argument("--concurrency", type=int)
        ap.add_argument("--reload", type=Path, default=None)
        a = ap.parse_args()
        reqs = json.loads(a.bodies.read_text())
        print(json.dumps(asyncio.run(run_python(a.python_client, reqs, a.concurrency, a.reload))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", type=Path)
    ap.add_argument("--reload-package", type=Path, default=None, help="package swapped in under load")
    ap.add_argument("--configs", nargs="+", default=["torch:--engine torch", "onnx:--engine onnx"],
                    help="NAME[@SERVER CPUS][%%SOURCE TREE][#PACKAGE]:SERVE ARGS, one configuration each")
    ap.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    ap.add_argument("--duration", type=int, default=8, help="seconds of wrk per level")
    ap.add_argument("--requests", type=int, default=400, help="requests of the Python client per level")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--server-cpus", default="1", help="taskset CPU list of the server ('' = any)")
    ap.add_argument("--client-cpus", default="0", help="taskset CPU list of wrk and the Python client")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ablation", type=int, default=0, metavar="ROUNDS",
                    help="instead: all configurations up at once, wrk only, interleaved for ROUNDS rounds")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    bodies = payloads(args.package, args.items, 500, args.seed)
    if args.ablation:
        with tempfile.TemporaryDirectory() as tmp:
            rows = ablation(args, bodies, Path(tmp))
        print(f"\nCPUs: {os.cpu_count()}, servers on {args.server_cpus or 'any'}, wrk on {args.client_cpus or 'any'}")
        print(ablation_table(rows))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"package": str(args.package), "ablation": rows}, indent=1))
        return
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bodies.json").write_text(json.dumps(bodies[: args.requests]))
        for i, spec in enumerate(args.configs):
            name, _, server_args = spec.partition(":")
            cold = payloads(args.package, args.items, 500, args.seed + 1000 + i)
            rows += run_config(name, shlex.split(server_args), args, bodies, cold, Path(tmp))
    print(f"\nCPUs: {os.cpu_count()}, server on {args.server_cpus or 'any'}, clients on {args.client_cpus or 'any'}")
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"package": str(args.package), "items": args.items, "rows": rows,
                                        "server_cpus": args.server_cpus, "client_cpus": args.client_cpus,
                                        "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
