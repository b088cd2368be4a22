"""Preprocessing speed: the streaming Amazon loader vs ``pandas.read_json(lines=True)`` on one json.gz.

Generates an Amazon-2014-style ``reviews_*.json.gz`` (``--lines`` reviews, every field of the real dumps:
reviewerID, asin, reviewerName, helpful, reviewText, overall, summary, unixReviewTime, reviewTime), then
runs each reader in its own fresh Python process and reports wall time and the peak resident memory of
that process (its VmHWM), so neither run inherits the other's allocations.

    python benchmarks/amazon_loader.py --lines 5000000 --out /tmp/amazon-bench   # needs pandas ([bench])
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

WORDS = np.array(["good", "great", "bad", "fine", "story", "plot", "actor", "music", "sound", "album", "track",
                  "book", "read", "movie", "watch", "love", "hate", "boring", "classic", "the", "a", "of", "and",
                  "to", "it", "is", "was", "this", "that", "with", "for", "not", "but"])


def generate(path: Path, n_lines: int, seed: int = 0, chunk: int = 500_000) -> Path:
    """Write ``n_lines`` reviews; users and items drawn Zipf-like, as in the real dumps."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(10, n_lines // 8), max(10, n_lines // 20)
    with gzip.open(path, "wb", compresslevel=6) as f:
        for start in range(0, n_lines, chunk):
            n = min(chunk, n_lines - start)
            users = np.minimum(rng.zipf(1.3, n), n_users) + rng.integers(0, n_users, n) % n_users
            items = np.minimum(rng.zipf(1.3, n), n_items) + rng.integers(0, n_items, n) % n_items
            words = WORDS[rng.integers(0, len(WORDS), (n, 14))]
            text = [" ".join(w) for w in words]
            ts = rng.integers(1_000_000_000, 1_400_000_000, n)
            df = pl.DataFrame({
                "reviewerID": [f"A{u:013d}" for u in users],
                "asin": [f"{i:010d}" for i in items],
                "reviewerName": [f"user {u}" for u in users],
                "helpful": [[int(a), int(a + b)] for a, b in zip(rng.integers(0, 5, n), rng.integers(0, 5, n),
                                                                 strict=True)],
                "reviewText": text,
                "overall": rng.integers(1, 6, n).astype(np.float64),
                "summary": [t[:24] for t in text],
                "unixReviewTime": ts,
            }).with_columns(pl.from_epoch("unixReviewTime").dt.strftime("%m %d, %Y").alias("reviewTime"))
            buf = io.BytesIO()
            df.write_ndjson(buf)
            f.write(buf.getvalue())
    return path


# Each child prints its row count and its own peak RSS (VmHWM of /proc/self/status). The parent's rusage
# is no use here: on Linux a child's ru_maxrss counts the memory of the forking parent before exec.
_HWM = "; print(int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]))"
CHILD = {
    "dacdr": (
        "from dacdr.data.loaders.amazon import read_reviews; from dacdr.data.loaders.lines import Rejects;"
        "import sys; df, n = read_reviews(sys.argv[1], 'amazon-2014', Rejects()); print(df.height)" + _HWM
    ),
    "pandas": "import sys, pandas as pd; df = pd.read_json(sys.argv[1], lines=True); print(len(df))" + _HWM,
    "imports-only": "import polars, pandas, dacdr.data.loaders; print(0)" + _HWM,
}


def run_child(kind: str, path: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD[kind], str(path)], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed with status {proc.returncode}: {proc.stderr[-2000:]}")
    rows, hwm_kib = proc.stdout.split()[-2:]
    return {"rows": int(rows), "seconds": round(seconds, 2), "peak_rss_mib": round(int(hwm_kib) / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=5_000_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/amazon-loader-bench"))
    ap.add_argument("--skip-pandas", action="store_true", help="only the dacdr loader")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"reviews_Synthetic_{args.lines}.json.gz"
    if not path.exists():
        t0 = time.perf_counter()
        generate(path, args.lines)
        print(f"generated {path} in {time.perf_counter() - t0:.0f} s")
    size = path.stat().st_size
    results = {"file": str(path), "lines": args.lines, "gz_mib": round(size / 2**20, 1), "cores": os.cpu_count()}
    for kind in ["imports-only", "dacdr"] + ([] if args.skip_pandas else ["pandas"]):
        results[kind] = run_child(kind, path)
        print(kind, results[kind], flush=True)
    if "pandas" in results:
        results["speedup"] = round(results["pandas"]["seconds"] / results["dacdr"]["seconds"], 2)
        results["memory_ratio"] = round(results["dacdr"]["peak_rss_mib"] / results["pandas"]["peak_rss_mib"], 3)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
