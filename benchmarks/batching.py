"""In-process: does scoring several requests in one engine call (cross-request micro-batching) pay?

One request is 1 user x `--items` items of a target pool (random store users). Each engine scores the same
requests one per call and `--batch` per call (`Scorer.score` with several users: each user's history is
then repeated on her rows, since the model broadcasts one history only); the two are interleaved round after
round so that the box's load hits both alike.

    python benchmarks/batching.py PKG --batch 8 --rounds 6
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
import torch

from dacdr.serving.scoring import ScoreQuery, Scorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=48, help="requests per round and mode")
    ap.add_argument("--engines", default="torch,onnx")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    results = {}
    for engine in args.engines.split(","):
        scorer = Scorer.load(args.package, engine, 1)  # type: ignore[arg-type]
        target = scorer.spec.target_domains[0]
        pool = [scorer.item_vocab.values[i - 2] for i in scorer.pkg.item_pools[target]]
        users = scorer.user_vocab.values
        times: dict[str, list[float]] = {"one per call": [], f"{args.batch} per call": []}
        for _ in range(args.rounds):
            qs = [ScoreQuery(rng.choice(users), target, rng.sample(pool, args.items)) for _ in range(args.per_round)]
            t0 = time.perf_counter()
            for q in qs:
                scorer.score([q])
            times["one per call"].append((time.perf_counter() - t0) / len(qs) * 1e3)
            t0 = time.perf_counter()
            for i in range(0, len(qs), args.batch):
                scorer.score(qs[i:i + args.batch])
            times[f"{args.batch} per call"].append((time.perf_counter() - t0) / len(qs) * 1e3)
        med = {k: round(float(np.median(v)), 3) for k, v in times.items()}
        results[engine] = med | {"ratio": round(med[f"{args.batch} per call"] / med["one per call"], 2)}
        print(engine, json.dumps(results[engine]), flush=True)
    print("\n| engine | ms per request, one per call | ms per request, " f"{args.batch} per call | ratio |\n|---|---|---|---|")
    for engine, r in results.items():
        print(f"| {engine} | {r['one per call']} | {r[f'{args.batch} per call']} | {r['ratio']} |")


if __name__ == "__main__":
    main()
