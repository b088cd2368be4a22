"""`POST /v1/recommend`: recall@k of the retrieval stage against full scoring, and its latency over HTTP.

1. Recall, in process: for held-out store users (none of those the retrieval factors were fitted on) and
   unknown users (empty history), the top k of the retrieval stage against the top k of scoring the whole
   pool exactly (`exact: true`), per domain.
2. Latency: a fresh `dacdr serve` pinned to the server CPUs; wrk (pinned to the client CPUs, bodies of
   random held-out users) at concurrency 1 and 8 for the retrieval stage, and at concurrency 1 for exact
   full scoring.

    python benchmarks/recommend.py --world data/pools      # the demo world with 1k / 5k / 20k target pools
    dacdr train configs/dacdr-demo.yaml --set data.path=data/pools \
        --set train.epochs=2 --out runs/pools
    dacdr package runs/pools --out PKG && dacdr index PKG  # fit the retrieval stage once
    python benchmarks/recommend.py PKG --domains target_2,target_3 --out runs/recommend.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from loadtest import run_wrk, start_server, stop_server  # noqa: E402


def recall(package: Path, domains: list[str], k: int, n_users: int, engine: str, seed: int) -> tuple[list, dict]:
    import torch

    from dacdr.serving.recommend import _fit_users, attach_indexes, recommend
    from dacdr.serving.scoring import ScoreQuery, Scorer

    torch.set_num_threads(1)
    scorer = Scorer.load(package, engine, 1)  # type: ignore[arg-type]
    attach_indexes(scorer)
    fitted = {u for u, _ in _fit_users(scorer, scorer.retrieval)}
    held_out = [u for u in scorer.user_vocab.values if u not in fitted and scorer.pkg.store.history(u) is not None]
    random.Random(seed).shuffle(held_out)
    users = held_out[:n_users]
    rows, bodies = [], {}
    for d in domains:
        for kind, group in (("store users", users), ("unknown users", [f"new-{i}" for i in range(10)])):
            hits, popular_hits, t_retr, t_exact = [], [], [], []
            ix = scorer.indexes[d]
            by_offset = [scorer.item_vocab.values[i - 2] for i in ix.items[np.argsort(-ix.offset, kind="stable")]]
            for u in group:
                q = ScoreQuery(u, d, [])
                t0 = time.perf_counter()
                got = recommend(scorer, q, k)
                t_retr.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                full = recommend(scorer, q, len(ix.items), exact=True)  # every allowed item, ranked
                t_exact.append(time.perf_counter() - t0)
                truth = {x["item"] for x in full["items"][:k]}
                hits.append(len({x["item"] for x in got["items"]} & truth) / k)
                allowed = {x["item"] for x in full["items"]}  # the non-personalised baseline: the offset alone
                popular_hits.append(len(set([i for i in by_offset if i in allowed][:k]) & truth) / k)
            rows.append({"domain": d, "pool": len(scorer.indexes[d].items), "users": kind, "n": len(group),
                         f"recall@{k}": round(float(np.mean(hits)), 4), "min": round(float(np.min(hits)), 2),
                         "offset-only recall": round(float(np.mean(popular_hits)), 4),
                         "in-process ms retrieval p50": round(float(np.median(t_retr)) * 1e3, 2),
                         "in-process ms exact p50": round(float(np.median(t_exact)) * 1e3, 2),
                         "scored_exactly": got["retrieval"]["scored_exactly"], "mode": got["retrieval"]["mode"]})
            print(json.dumps(rows[-1]), flush=True)
        bodies[d] = [{"user_id": u, "domain": d, "k": k} for u in users]
    return rows, {"config": scorer.retrieval.__dict__, "bodies": bodies, "engine": engine}


def lua(bodies: list[dict]) -> str:
    rows = ",\n".join("[[" + json.dumps(b) + "]]" for b in bodies)
    return (f"bodies = {{\n{rows}\n}}\nwrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/json'\n"
            "request = function() return wrk.format(nil, '/v1/recommend', nil, bodies[math.random(#bodies)]) end\n")


def make_world(out: str) -> None:
    """The demo world resized: 8,000 people, a 40,000-item catalogue, target pools of 1,000 / 5,000 / 20,000."""
    from dacdr.data.synthetic import default_targets, generate, get_preset

    targets = default_targets()
    cfg = get_preset("demo", n_users=8000, n_items=40000, targets=[
        t.model_copy(update={"n_items": n}) for t, n in zip(targets, (1000, 5000, 20000), strict=True)])
    generate(cfg.model_copy(update={"name": "synthetic-pools"}), out, seed=0)


def main() -> None:
    if sys.argv[1:2] == ["--world"]:
        make_world(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", type=Path)
    ap.add_argument("--domains", default="target_2,target_3")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--users", type=int, default=100, help="held-out store users per domain")
    ap.add_argument("--engine", default="onnx")
    ap.add_argument("--duration", type=int, default=8, help="seconds of wrk per level")
    ap.add_argument("--server-cpus", default="1")
    ap.add_argument("--client-cpus", default="0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-http", action="store_true", help="recall only")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    domains = args.domains.split(",")
    rows, meta = recall(args.package, domains, args.k, args.users, args.engine, args.seed)
    print(f"\nrecall@{args.k} (engine {args.engine}, retrieval {meta['config']})\n")
    print(f"| domain | pool | users | n | recall@{args.k} | min | items scored exactly | recall@{args.k} of the "
          "offset alone (not personalised) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['domain']} | {r['pool']} | {r['users']} | {r['n']} | {r[f'recall@{args.k}']} | {r['min']} | "
              f"{r['scored_exactly']} of {r['pool']} | {r['offset-only recall']} |")
    if args.no_http:
        return
    latency = []
    proc, url = start_server(args.package, ["--engine", args.engine], args.server_cpus)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for d in domains:
                for mode, levels in (("retrieval", (1, 8)), ("exact", (1,))):
                    script = Path(tmp) / f"{d}-{mode}.lua"
                    script.write_text(lua([b | {"exact": mode == "exact"} for b in meta["bodies"][d]]))
                    for c in levels:
                        row = run_wrk(url, script, c, args.duration, args.client_cpus) | {"domain": d, "mode": mode}
                        latency.append(row)
                        print(json.dumps(row), flush=True)
    finally:
        stop_server(proc)
    print(f"\nHTTP, wrk, server on CPU {args.server_cpus}, wrk on {args.client_cpus}\n")
    print("| domain | mode | concurrency | requests | errors | p50 ms | p99 ms | req/s | load |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in latency:
        print(f"| {r['domain']} | {r['mode']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
              f"{r['p50_ms']} | {r['p99_ms']} | {r['throughput_rps']} | {r['load1']:.1f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"recall": rows, "latency": latency, "retrieval": meta["config"],
                                        "engine": args.engine, "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
