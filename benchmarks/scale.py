"""Scale and distributed-training benchmarks (docs/benchmarks.md, "Scale and distributed training").

    python benchmarks/scale.py prepare DATASET            # out-of-core preparation: rows/s (run under /usr/bin/time -v)
    python benchmarks/scale.py train DATASET --steps 300   # streaming training end to end: samples/s, test AUC
    python benchmarks/scale.py ddp DATASET --steps 200     # in-memory training samples/s with 1 and 2 processes
    python benchmarks/scale.py stream-vs-memory DATASET    # streaming vs in-memory training samples/s

Each prints one JSON line per measurement. Peak memory: run the command under `/usr/bin/time -v`
("Maximum resident set size").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from dacdr.config import RunConfig


def _cfg(dataset: str, steps: int, streaming: bool, batch: int = 1024, epochs: int = 1, **train) -> RunConfig:
    return RunConfig.model_validate({
        "data": {"path": dataset, "max_len": 50, "streaming": streaming},
        "model": {"name": "DACDR", "params": {"dim": 32, "heads": 2}},
        "train": {"epochs": epochs, "batch_size": batch, "max_steps_per_epoch": steps, "progress": False,
                  "seed": 0, **train},
    })


def prepare(args: argparse.Namespace) -> None:
    from dacdr.config import DataConfig
    from dacdr.data.prepare import prepare

    t0 = time.perf_counter()
    data = prepare(DataConfig(path=str(args.dataset), cache_dir=args.cache, streaming=True),
                   log=lambda m: print(m, flush=True))
    print(json.dumps({"bench": "prepare_streaming", "rows": data.meta["rows"], "events": data.meta["events"],
                      "seconds": round(time.perf_counter() - t0, 1), "rows_per_s": round(data.meta["rows_per_s"]),
                      "buckets": data.meta["buckets"]}))


def train(args: argparse.Namespace) -> None:
    from dacdr.recipes.train import train as launch_train

    cfg = _cfg(args.dataset, args.steps, streaming=True, num_workers=args.workers)
    if args.cache:
        cfg.data.cache_dir = args.cache
    out = Path(tempfile.mkdtemp(prefix="scale-train-"))
    t0 = time.perf_counter()
    res = launch_train(cfg, 1, out, resume=False)
    hist = res["history"][-1]
    aucs = {d: round(m["auc"], 4) for d, m in res["test"]["cold"].items()}
    print(json.dumps({"bench": "train_streaming", "steps": args.steps, "samples": hist["samples"],
                      "samples_per_s": round(hist["samples_per_s"]), "seconds_total": round(time.perf_counter() - t0),
                      "test_cold_auc": aucs}))


def ddp(args: argparse.Namespace) -> None:
    from dacdr.recipes.train import train as launch_train

    for nproc in (1, 2):
        cfg = _cfg(args.dataset, args.steps, streaming=args.streaming, num_threads=2 // nproc)
        out = Path(tempfile.mkdtemp(prefix=f"ddp{nproc}-"))
        res = launch_train(cfg, nproc, out, resume=False)
        hist = json.loads((out / "history.json").read_text())[-1]
        print(json.dumps({"bench": "train_processes", "nproc": nproc, "threads_per_process": 2 // nproc,
                          "samples": hist["samples"], "samples_per_s": round(hist["samples_per_s"]),
                          "test_cold_auc": {d: round(m["auc"], 4) for d, m in res["test"]["cold"].items()}}))


def stream_vs_memory(args: argparse.Namespace) -> None:
    from dacdr.recipes.train import train as launch_train

    for streaming in (False, True):
        cfg = _cfg(args.dataset, args.steps, streaming=streaming, epochs=args.epochs)
        out = Path(tempfile.mkdtemp(prefix="svm-"))
        res = launch_train(cfg, 1, out, resume=False)
        hist = res["history"]
        print(json.dumps({"bench": "stream_vs_memory", "streaming": streaming,
                          "samples_per_s": [round(h["samples_per_s"]) for h in hist],
                          "test_cold_auc": {d: round(m["auc"], 4) for d, m in res["test"]["cold"].items()}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("prepare", "train", "ddp", "stream-vs-memory"):
        p = sub.add_parser(name)
        p.add_argument("dataset")
        p.add_argument("--cache", default=None)
        p.add_argument("--steps", type=int, default=None)
        p.add_argument("--epochs", type=int, default=2)
        p.add_argument("--workers", type=int, default=0)
        p.add_argument("--streaming", action="store_true")
    args = ap.parse_args()
    {"prepare": prepare, "train": train, "ddp": ddp, "stream-vs-memory": stream_vs_memory}[args.cmd](args)


if __name__ == "__main__":
    main()
