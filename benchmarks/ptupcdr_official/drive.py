"""Run the official PTUPCDR code (github.com/easezyc/WSDM2022-PTUPCDR, not part of dacdr) on a split written by
`dacdr export-split --mode ptupcdr`, so that both run on identical data (docs/datasets.md).

    PYTHONPATH=benchmarks/ptupcdr_official:/path/to/WSDM2022-PTUPCDR \\
        python benchmarks/ptupcdr_official/drive.py EXPORT_ROOT 0.8 0.2 900 10 [--report timings.json]

EXPORT_ROOT holds `ready/_<train>_<test>/tgt_<T>_src_<S>/` (the official layout; `0.8 0.2` = beta 20 %).
This replaces the official entry.py (which also imports its Amazon preprocessing) by the same steps: seed
everything, build the config (table sizes from the export's ptupcdr.json; the MF base model, lr 0.01 and the epochs as in the
official README's defaults; emb_dim 10, meta_dim 50, wd 0 and batch sizes 256 / 256 / 128 / 64 / 128), then
`Run(config).main()`. The sibling `tensorflow` package provides the one TensorFlow function the official code
calls (keras `pad_sequences`), so TensorFlow need not be installed.

With `--report`, the official code's own methods are wrapped (nothing in its files changes) to time each call
of `train` and of its test evaluation per stage, and a JSON report is written: seconds per epoch and per
evaluation for each stage, data loading, the process's resident memory at three points, and its printed
results (the best test MAE / RMSE per stage). `benchmarks/ptupcdr_vs_official.py` runs this as its child.
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import random
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The official code's `stage` argument -> the stage it belongs to (the names of its printed sections).
STAGES = {
    "train_tgt": "TgtOnly", "test_tgt": "TgtOnly",
    "train_aug": "DataAug", "test_aug": "DataAug",
    "train_src": "CDR pretraining (source MF)",
    "train_map": "EMCDR", "test_map": "EMCDR",
    "train_meta": "PTUPCDR", "test_meta": "PTUPCDR",
}


def memory_mib() -> dict[str, float]:
    """The process's resident set now (`rss`) and its peak so far (`peak`), MiB (Linux /proc; else ru_maxrss)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "peak": int(fields["VmHWM"].split()[0]) / 1024}
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"rss": float("nan"), "peak": peak}


class StageTimer:
    """Wraps a `Run` instance's `train`, `eval_mae`, `eval_mae_last_epochs` and `get_data` (instance
    attributes shadow the class's methods, so the official code calls the wrappers) and records each call."""

    def __init__(self, run: Any):
        self.run = run
        self.calls: list[dict[str, Any]] = []
        self.memory: dict[str, dict[str, float]] = {"start": memory_mib()}
        for name, kind in (("train", "train"), ("eval_mae", "eval"), ("eval_mae_last_epochs", "eval")):
            setattr(run, name, self._wrap(getattr(run, name), kind))
        self._get_data = run.get_data
        run.get_data = self._timed_get_data

    def _wrap(self, method: Callable[..., Any], kind: str) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = method(*args, **kwargs)
            seconds = time.perf_counter() - t0
            # train(data_loader, model, ...), eval_mae(model, data_loader, stage); stage is passed by keyword
            loader = args[0] if kind == "train" else args[1]
            stage = kwargs.get("stage", "?")
            call = {"kind": kind, "stage": STAGES.get(stage, stage), "seconds": seconds,
                    "rows": len(loader.dataset), "batches": len(loader)}
            self.calls.append(call | ({"mae_rmse": list(out)} if kind == "eval" else {}))
            return out

        return timed

    def _timed_get_data(self):
        t0 = time.perf_counter()
        out = self._get_data()
        self.load_seconds = time.perf_counter() - t0
        self.memory["data loaded"] = memory_mib()
        return out

    def report(self) -> dict[str, Any]:
        """Per stage: the seconds of each training epoch and of each test evaluation, rows and batches, and
        the test MAE / RMSE of each epoch."""
        stages: dict[str, dict[str, Any]] = {}
        for c in self.calls:
            s = stages.setdefault(c["stage"], {"train_seconds": [], "eval_seconds": []})
            s[f"{c['kind']}_seconds"].append(c["seconds"])
            s[f"{c['kind']}_rows"], s[f"{c['kind']}_batches"] = c["rows"], c["batches"]
            if "mae_rmse" in c:  # the test MAE / RMSE after each epoch (the code keeps the best of them)
                s.setdefault("test_mae_rmse", []).append(c["mae_rmse"])
        return {"side": "official", "stages": stages, "load_seconds": getattr(self, "load_seconds", None),
                "memory_mib": self.memory | {"end": memory_mib()}, "results": dict(self.run.results)}


def build_config(root: str, r0: float, r1: float, epochs: int, batch: int | None = None) -> dict[str, Any]:
    """The official config; `batch` replaces its training batch sizes (source, target, meta, map) by one, for
    a control run (its defaults are 256 / 256 / 128 / 64)."""
    root = root.rstrip("/") + "/"
    found = glob.glob(f"{root}ready/_{int(r0 * 10)}_{int(r1 * 10)}/tgt_*_src_*/ptupcdr.json")
    if len(found) != 1:
        raise SystemExit(f"expected one export under {root}ready/_{int(r0 * 10)}_{int(r1 * 10)}/, found {len(found)}")
    with open(found[0]) as f:
        meta = json.load(f)
    pair = {"src": meta["src"], "tgt": meta["tgt"], "uid": meta["uid"], "iid": meta["iid"], "batchsize_src": 256,
            "batchsize_tgt": 256, "batchsize_meta": 128, "batchsize_map": 64, "batchsize_test": 128}
    if batch is not None:
        pair |= {"batchsize_src": batch, "batchsize_tgt": batch, "batchsize_meta": batch, "batchsize_map": batch}
    return {"use_cuda": 0, "root": root, "base_model": "MF", "task": "1", "ratio": [r0, r1], "epoch": epochs,
            "lr": 0.01, "emb_dim": 10, "meta_dim": 50, "num_fields": 2, "wd": 0, "src_tgt_pairs": {"1": pair}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root")
    ap.add_argument("r0", type=float)
    ap.add_argument("r1", type=float)
    ap.add_argument("seed", type=int)
    ap.add_argument("epochs", type=int)
    ap.add_argument("--report", help="write the per-stage timings, memory and results to this JSON file")
    ap.add_argument("--batch", type=int, help="one training batch size for every stage instead of the official ones "
                    "(a control run)")
    args = ap.parse_args()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    config = build_config(args.root, args.r0, args.r1, args.epochs, args.batch)
    from run import Run  # the official code's

    run = Run(config)
    timer = StageTimer(run) if args.report else None
    run.main()
    if timer is not None:
        report = timer.report() | {"torch_threads": torch.get_num_threads(), "config": config}
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
