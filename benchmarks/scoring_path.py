"""In-process cost of one scoring request (1 user x N items), per engine, without HTTP.

Default: `Scorer.score` and the engine call alone for each engine configuration — eager PyTorch, the single
ONNX graph, the split ONNX graphs with the user side cached (every user seen before) and without the cache
(the user-side graph on every request) — over the same random store users and items of a target pool,
interleaved round after round so that the box's load hits all alike; medians over rounds and ratios against
the single ONNX graph.

    python benchmarks/scoring_path.py PKG --items 100 --rounds 7

`--eager-history`: the older measurement, the eager model with the history repeated on every row against
passed once (`broadcasts_history`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import numpy as np
import torch

from dacdr.package import load_package
from dacdr.serving.scoring import ScoreQuery, Scorer

CONFIGS = {
    "torch": {"engine": "torch"},
    "onnx single": {"engine": "onnx", "onnx_graph": "single"},
    "onnx split": {"engine": "onnx", "onnx_graph": "split"},
    "onnx split uncached": {"engine": "onnx", "onnx_graph": "split", "user_cache": 0},
}


def engines(args: argparse.Namespace) -> None:
    scorers = {name: Scorer.load(args.package, threads=1, history_cache=10_000, **cfg)  # type: ignore[arg-type]
               for name, cfg in CONFIGS.items() if name in args.configs.split(",")}
    any_scorer = next(iter(scorers.values()))
    rng = random.Random(0)
    target = any_scorer.spec.target_domains[0]
    pool = [any_scorer.item_vocab.values[i - 2] for i in any_scorer.pkg.item_pools[target]]
    users = any_scorer.user_vocab.values
    queries = [ScoreQuery(rng.choice(users), target, rng.sample(pool, min(args.items, len(pool))))
               for _ in range(args.requests)]
    for s in scorers.values():  # every user seen once: the cached configuration then measures cache hits
        for q in queries:
            s.score([q])
    calls = {name: [s._inputs([s.resolve(q)], [s.domain_row(q)], [s.item_indices(q.items)], [q.user_id])
                    for q in queries] for name, s in scorers.items()}
    score_ms: dict[str, list[float]] = {n: [] for n in scorers}
    engine_ms: dict[str, list[float]] = {n: [] for n in scorers}
    for rnd in range(args.rounds):
        order = list(scorers.items()) if rnd % 2 == 0 else list(scorers.items())[::-1]
        for name, s in order:
            t0 = time.perf_counter()
            for q in queries:
                s.score([q])
            t1 = time.perf_counter()
            for inputs in calls[name]:
                s.engine(inputs)
            t2 = time.perf_counter()
            score_ms[name].append((t1 - t0) / len(queries) * 1e3)
            engine_ms[name].append((t2 - t1) / len(queries) * 1e3)
    ref = "onnx single" if "onnx single" in scorers else next(iter(scorers))
    rows = []
    for name in scorers:
        s, e = float(np.median(score_ms[name])), float(np.median(engine_ms[name]))
        rows.append({"config": name, "score_ms": round(s, 3), "engine_ms": round(e, 3),
                     "score_ratio": round(s / float(np.median(score_ms[ref])), 2),
                     "engine_ratio": round(e / float(np.median(engine_ms[ref])), 2)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.items} items, {args.requests} requests x {args.rounds} rounds, load {os.getloadavg()[0]:.1f}; "
          f"ratios against {ref}\n")
    print("| config | Scorer.score ms | engine call ms | score ratio | engine ratio |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['score_ms']} | {r['engine_ms']} | {r['score_ratio']} | {r['engine_ratio']} |")


def eager_history(args: argparse.Namespace) -> None:
    pkg = load_package(args.package)
    model = pkg.model.eval()
    spec = model.spec
    rng = np.random.default_rng(0)
    n, length = args.items, spec.max_len
    # a history of real items (their feature tokens) with behaviour index 2, extra fields (rating) at 2 too
    hist_items = pkg.item_table[rng.integers(2, len(pkg.item_table), length)]
    extra = np.full((length, len(spec.sequence_fields) - hist_items.shape[1]), 2, dtype=np.int64)
    seq = torch.from_numpy(np.concatenate([hist_items, extra], axis=1)[None])
    mask = torch.ones(1, length, dtype=torch.bool)
    item = torch.from_numpy(pkg.item_table[rng.integers(2, len(pkg.item_table), n)])
    domain = torch.from_numpy(pkg.domain_table[[3]])
    ways = {
        "repeated": (seq.expand(n, -1, -1), mask.expand(n, -1), item, domain.expand(n, -1)),
        "broadcast": (seq, mask, item, domain),
    }
    out = {}
    with torch.inference_mode():
        for name, inputs in ways.items():
            for _ in range(10):
                model(*inputs)
            t0 = time.perf_counter()
            for _ in range(args.requests):
                model(*inputs)
            out[name] = (time.perf_counter() - t0) / args.requests * 1000
    print(json.dumps({"items": n, "L": length, "ms_per_request": {k: round(v, 3) for k, v in out.items()},
                      "speed-up": round(out["repeated"] / out["broadcast"], 2)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--requests", type=int, default=200, help="requests per round and configuration")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    ap.add_argument("--eager-history", action="store_true", help="the eager model: history repeated vs once")
    args = ap.parse_args()
    torch.set_num_threads(1)
    eager_history(args) if args.eager_history else engines(args)


if __name__ == "__main__":
    main()
