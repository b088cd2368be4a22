"""DACDR training and inference throughput on the demo preset, and peak memory, per batch size.

    python benchmarks/train_throughput.py --threads 2 --out docs/benchmarks-throughput.json

Training: samples/s over a fixed number of optimizer steps after warm-up (forward, backward, AdamW step and
batch gathering included). Inference: samples/s of `predict` in eval mode. Peak memory: the process's peak
RSS (ru_maxrss) after each batch size, and the tensor bytes the batch and the model hold. The same run
times DNN-multi (mean pooling, no attention) as the in-run reference for what the attention costs.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from dacdr.config import DataConfig
from dacdr.data.batches import BatchGatherer
from dacdr.data.prepare import prepare
from dacdr.data.synthetic import generate
from dacdr.evaluation import predict
from dacdr.models import create_model


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(model, gatherer, idx, batch_size: int, steps: int, warmup: int = 3,
               device: torch.device = torch.device("cpu")) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(0)

    def forever():  # epochs back to back: a timed point may need more samples than one epoch holds
        while True:
            yield from gatherer.iterate(idx, batch_size, shuffle=True, generator=gen)

    batches = forever()
    model.train()
    t0, seen = None, 0
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            t0 = time.perf_counter()
        b = next(batches)
        if device.type != "cpu":
            b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        loss = loss_fn(model.score(b), b["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= warmup:
            seen += len(b["label"])
    _sync(device)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/synthetic-demo-seed0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="256,512,1024,2048,4096")
    ap.add_argument("--samples-per-point", type=int, default=60_000, help="training samples timed per point")
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (batches are gathered on the CPU either way)")
    ap.add_argument("--models", default="DACDR,DNN-multi")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = Path(args.data)
    if not (data / "dataset.json").exists():
        generate("demo", data, seed=0)
    prepared = prepare(DataConfig(path=str(data), max_len=args.max_len))
    g = BatchGatherer(prepared)
    idx = prepared.split.train_target
    rows = []
    for name in args.models.split(","):
        for bs in map(int, args.batch_sizes.split(",")):
            model = create_model(name, prepared.spec).to(device)
            steps = max(5, args.samples_per_point // bs)
            rate = train_rate(model, g, idx, bs, steps, device=device)
            b = g.gather(idx[:bs])
            batch_mb = sum(t.numel() * t.element_size() for t in b.values()) / 2**20
            rows.append({"model": name, "batch_size": bs, "train_samples_per_s": round(rate),
                         "batch_tensor_mb": round(batch_mb, 2), "peak_rss_mb": round(peak_rss_mb())}
                        | ({"peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20)}
                           if device.type == "cuda" else {}))
            print(rows[-1], flush=True)
        model = create_model(name, prepared.spec).to(device)
        test = prepared.split.test
        predict(model, g, test[:8192])  # warm-up
        t0 = time.perf_counter()
        predict(model, g, test, batch_size=8192)
        _sync(device)
        inf = len(test) / (time.perf_counter() - t0)
        rows.append({"model": name, "inference_samples_per_s": round(inf), "eval_batch_size": 8192,
                     "n": len(test)})
        print(rows[-1], flush=True)
    n_params = sum(p.numel() for p in create_model("DACDR", prepared.spec).parameters())
    report = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": args.threads, "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__, "max_len": args.max_len, "dacdr_parameters": n_params,
              "train_samples": len(idx), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))


if __name__ == "__main__":
    main()
