"""In-process cost of one scoring request (1 user x N items) with the eager model: the history repeated on every
row (what the ONNX engine and the models without `broadcasts_history` do) against the history passed once.

    python benchmarks/scoring_path.py PKG --items 100 --repeats 300
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from dacdr.package import load_package


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("package")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
            for _ in range(args.repeats):
                model(*inputs)
            out[name] = (time.perf_counter() - t0) / args.repeats * 1000
    print(json.dumps({"items": n, "L": length, "ms_per_request": {k: round(v, 3) for k, v in out.items()},
                      "speed-up": round(out["repeated"] / out["broadcast"], 2)}))


if __name__ == "__main__":
    main()
