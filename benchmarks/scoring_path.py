"""In-process cost of one scoring request (1 user x N items), per engine, without HTTP.

Default: `Scorer.score` and the engine call alone for each engine configuration — eager PyTorch, the single
ONNX graph, the split ONNX graphs with the user side cached (every user seen before) and without the cache
(the user-side graph on every request) — over the same random store users and items of a target pool,
interleaved round after round so that the box's load hits all alike; medians over rounds and ratios against
the single ONNX graph.

    python benchmarks/scoring_path.py PKG --items 100 --rounds 7

`--breakdown`: where one request's time goes (split ONNX engine): JSON parsing and validation, resolving the
history, the item look-ups, the model inputs, the engine, the response dict, orjson.

`--session-options`: the candidate-side graph under ONNX Runtime session options (graph optimisation level,
execution mode, spinning, memory arena), interleaved, ratios against the defaults the engine uses.

`--candidate-graph`: the served candidate-side graph (step 2's head mean taken once) against the earlier one,
and fed pre-built `OrtValue`s (bound IO), interleaved.

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
    queries = _queries(next(iter(scorers.values())), args)
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


def _queries(scorer: Scorer, args: argparse.Namespace) -> list[ScoreQuery]:
    rng = random.Random(0)
    target = scorer.spec.target_domains[0]
    pool = [scorer.item_vocab.values[i - 2] for i in scorer.pkg.item_pools[target]]
    return [ScoreQuery(rng.choice(scorer.user_vocab.values), target, rng.sample(pool, min(args.items, len(pool))))
            for _ in range(args.requests)]


def breakdown(args: argparse.Namespace) -> None:
    import orjson

    from dacdr.data.features import OOV
    from dacdr.serving.app import ScoreRequest

    scorer = Scorer.load(args.package, "onnx", 1, 10_000, "split")
    bodies = [orjson.dumps({"user_id": q.user_id, "domain": q.domain, "items": q.items})
              for q in _queries(scorer, args)]
    parts: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        acc: dict[str, float] = {}
        for body in bodies:
            t = [time.perf_counter()]
            req = ScoreRequest.model_validate(orjson.loads(body))
            t.append(time.perf_counter())
            q = ScoreQuery(req.user_id, req.domain, req.items)
            rows, resolved = [scorer.domain_row(q)], [scorer.resolve(q)]
            t.append(time.perf_counter())
            idx = [scorer.item_indices(q.items)]
            t.append(time.perf_counter())
            inputs = scorer._inputs(resolved, rows, idx, [q.user_id])
            t.append(time.perf_counter())
            preds = scorer.engine(inputs)
            t.append(time.perf_counter())
            result = {"user_id": q.user_id, "domain": q.domain, "scores": preds.astype(float).tolist(),
                      "unknown_items": [q.items[k] for k in np.flatnonzero(idx[0] == OOV)],
                      "history": resolved[0].summary(), "model_version": scorer.version}
            t.append(time.perf_counter())
            orjson.dumps(result)
            t.append(time.perf_counter())
            for name, a, b in zip(("parse + validate", "resolve history", "item look-ups", "model inputs", "engine",
                                   "response dict", "orjson"), t, t[1:], strict=False):
                acc[name] = acc.get(name, 0.0) + b - a
        for name, v in acc.items():
            parts.setdefault(name, []).append(v / len(bodies) * 1e6)
    print(f"\n{args.items} items, {args.requests} requests x {args.rounds} rounds, load {os.getloadavg()[0]:.1f}\n")
    print("| part | µs per request (median over rounds) |\n|---|---|")
    for name, v in parts.items():
        print(f"| {name} | {np.median(v):.0f} |")


def session_options(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    from dacdr.serving.engines import _session_options
    from dacdr.serving.split import split_onnx_bytes

    variants = {
        "defaults (1 intra-op, 1 inter-op thread)": {},
        "spinning off": {"cfg": {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}},
        "optimisation: basic": {"graph_optimization_level": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC},
        "optimisation: extended": {"graph_optimization_level": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED},
        "execution: parallel": {"execution_mode": ort.ExecutionMode.ORT_PARALLEL},
        "no memory pattern, no arena": {"enable_mem_pattern": False, "enable_cpu_mem_arena": False},
    }
    pkg = load_package(args.package)
    user_graph, cand_graph, names = split_onnx_bytes(pkg.model)
    sessions = {}
    for name, v in variants.items():
        opts = _session_options(1)
        for key, value in v.items():
            if key == "cfg":
                for k, x in value.items():
                    opts.add_session_config_entry(k, x)
            else:
                setattr(opts, key, value)
        sessions[name] = ort.InferenceSession(cand_graph, opts, providers=["CPUExecutionProvider"])
    scorer = Scorer.load(args.package, "onnx", 1, 0, "split")
    feeds = _candidate_feeds(scorer, args)
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for rnd in range(args.rounds):
        for name, sess in (list(sessions.items()) if rnd % 2 == 0 else list(sessions.items())[::-1]):
            t0 = time.perf_counter()
            for _ in range(4):
                for f in feeds:
                    sess.run(["score"], f)
            times[name].append((time.perf_counter() - t0) / (4 * len(feeds)) * 1e6)
    base = float(np.median(next(iter(times.values()))))
    print(f"\ncandidate-side graph, {args.items} items, {args.rounds} rounds, load {os.getloadavg()[0]:.1f}\n")
    print("| session options | µs per call | ratio |\n|---|---|---|")
    for name, v in times.items():
        print(f"| {name} | {np.median(v):.0f} | {np.median(v) / base:.2f} |")


def _candidate_feeds(scorer: Scorer, args: argparse.Namespace) -> list[dict[str, np.ndarray]]:
    """The candidate-side graph's inputs for 50 of the benchmark's queries (the user side computed once each)."""
    feeds = []
    for q in _queries(scorer, args)[:50]:
        inputs = scorer._inputs([scorer.resolve(q)], [scorer.domain_row(q)], [scorer.item_indices(q.items)], [q.user_id])
        feeds.append({"item": inputs["item"], **scorer.engine.user_side(inputs["seq"], inputs["seq_mask"],
                                                                         inputs["domain"])})
    return feeds


def candidate_graph(args: argparse.Namespace) -> None:
    """The candidate-side graph with step 2's head mean taken once (served) against the earlier graph (an
    identity block of `wc` for the token match), and the served graph fed pre-built `OrtValue`s (bound IO:
    the user side's tensors wrapped once, as a cache could keep them), interleaved on the same feeds."""
    import onnxruntime as ort

    from dacdr.serving.engines import _session_options
    from dacdr.serving.split import split_onnx_bytes

    pkg = load_package(args.package)
    sessions = {}
    for name, head_mean in (("earlier graph", False), ("head-mean graph (served)", True)):
        _, graph, _ = split_onnx_bytes(pkg.model, head_mean=head_mean)
        sessions[name] = ort.InferenceSession(graph, _session_options(1), providers=["CPUExecutionProvider"])
    scorer = Scorer.load(args.package, "onnx", 1, 0, "split")
    feeds = _candidate_feeds(scorer, args)
    bound = [{k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in f.items()} for f in feeds]
    served = sessions["head-mean graph (served)"]
    runs = {name: (lambda s=sess: [s.run(["score"], f) for f in feeds]) for name, sess in sessions.items()}
    runs["head-mean graph, bound IO (OrtValues)"] = lambda: [served.run_with_ort_values(["score"], b) for b in bound]
    want = [served.run(["score"], f)[0] for f in feeds]
    got = [sessions["earlier graph"].run(["score"], f)[0] for f in feeds]
    worst = max(float(np.abs(a - b).max()) for a, b in zip(want, got, strict=True))
    times: dict[str, list[float]] = {n: [] for n in runs}
    for rnd in range(args.rounds):
        for name, run in (list(runs.items()) if rnd % 2 == 0 else list(runs.items())[::-1]):
            t0 = time.perf_counter()
            for _ in range(4):
                run()
            times[name].append((time.perf_counter() - t0) / (4 * len(feeds)) * 1e6)
    base = float(np.median(times["earlier graph"]))
    print(f"\ncandidate-side graph, {args.items} items, {args.rounds} rounds, load {os.getloadavg()[0]:.1f}; "
          f"largest |served - earlier| logit {worst:.2g}\n")
    print("| candidate graph | µs per call | ratio |\n|---|---|---|")
    for name, v in times.items():
        print(f"| {name} | {np.median(v):.0f} | {np.median(v) / base:.2f} |")


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
    ap.add_argument("--breakdown", action="store_true", help="where one request's time goes (split engine)")
    ap.add_argument("--session-options", action="store_true", help="ONNX Runtime session options, candidate graph")
    ap.add_argument("--eager-history", action="store_true", help="the eager model: history repeated vs once")
    ap.add_argument("--candidate-graph", action="store_true", help="head-mean candidate graph vs the earlier one")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.breakdown:
        breakdown(args)
    elif args.session_options:
        session_options(args)
    elif args.eager_history:
        eager_history(args)
    elif args.candidate_graph:
        candidate_graph(args)
    else:
        engines(args)


if __name__ == "__main__":
    main()
