"""DDP (plain nn.Embedding tables, replicated) vs TorchRec DMP (sharded tables) on the same ranks, and where the
time of a DDP step goes.

    python benchmarks/scale_torchrec.py compare DATASET --steps 60 --rows 1000000,4000000
    python benchmarks/scale_torchrec.py profile DATASET --steps 60

`compare` trains DACDR (k = 32, L = 50, batch 1024) for `--steps` steps on 2 gloo ranks, once per mode and
item-table size, and prints one JSON line each: samples/s over all ranks, peak RSS of each rank, and the bytes
of embedding state each rank holds (weights, gradients and optimizer state of the tables). The item table is
grown to `--rows` rows (unused rows past the data's items): what a big catalogue costs each step and each rank.
Modes run one after another in the same invocation, so their ratio is measured under the same box load.

`profile` times the parts of a training step (batch gather, forward, backward with DDP's gradient all-reduce,
optimizer) with 1 process x 2 threads, 1 process x 1 thread and 2 processes x 1 thread, plus the all-reduce of
the model's gradients alone: the budget of the 2-process speed-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dacdr.config import DataConfig, TrainConfig
from dacdr.data.prepare import prepare
from dacdr.data.samples import PreparedData
from dacdr.distributed import current
from dacdr.distributed.launch import spawn
from dacdr.models import create_model
from dacdr.training.trainer import Trainer

MODEL = {"dim": 32, "heads": 2}


def _prepared(dataset: str, rows: int | None) -> PreparedData:
    prepared = prepare(DataConfig(path=str(dataset), max_len=50))
    if rows:
        if rows < prepared.spec.vocab_sizes["item"]:
            raise ValueError(f"--rows {rows} is below the data's {prepared.spec.vocab_sizes['item']} items")
        spec = prepared.spec.model_copy(update={"vocab_sizes": prepared.spec.vocab_sizes | {"item": rows}})
        prepared.spec = spec
    return prepared


def _state_bytes(trainer: Trainer, opt_state_per_value: int) -> int:
    """Bytes of embedding state on this rank: weights + gradients + optimizer state of the tables."""
    if trainer.sharded is None:  # nn.Embedding with AdamW: weight, dense gradient, exp_avg, exp_avg_sq
        return sum(4 * m.weight.numel() * m.weight.element_size() for m in trainer.model.modules()
                   if isinstance(m, torch.nn.Embedding))
    sharded = trainer.sharded
    weights = sharded.embedding_bytes(sharded.rank)
    opt = sum(sh.tensor.numel() * sh.tensor.element_size() for st in sharded._optimizer_tensors().values()
              for sh in st.local_shards())
    return weights + opt  # the fused optimizer updates rows in backward: no gradient tensor is kept


def _compare_worker(dataset: str, rows: int, mode: str, steps: int, out: str) -> None:
    torch.set_num_threads(1)
    prepared = _prepared(dataset, rows)
    cfg = TrainConfig(epochs=1, batch_size=1024, progress=False, seed=0, num_threads=1, max_steps_per_epoch=steps,
                      train_on="targets", embeddings=mode, patience=5)
    torch.manual_seed(0)
    model = create_model("DACDR", prepared.spec, **MODEL)
    trainer = Trainer(prepared, model, "DACDR", cfg, Path(out) / f"{mode}-{rows}")
    trainer.validation_score = lambda: (0.5, {"auc": 0.5})  # throughput only: skip scoring the valid split
    history = trainer.fit(resume=False)
    ctx = current()
    record = {"mode": mode, "rows": rows, "rank": ctx.rank, "world": ctx.world,
              "samples_per_s": history[-1]["samples_per_s"], "loss": history[-1]["loss"],
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "embedding_state_mib": _state_bytes(trainer, 4) / 2**20}
    (Path(out) / f"{mode}-{rows}-rank{ctx.rank}.json").write_text(json.dumps(record))


def compare(args: argparse.Namespace) -> None:
    out = tempfile.mkdtemp(prefix="ddp-vs-dmp-")
    for rows in [int(r) for r in args.rows.split(",")]:
        for mode in ("plain", "torchrec"):
            spawn(_compare_worker, args.world, args.dataset, rows, mode, args.steps, out)
            recs = [json.loads((Path(out) / f"{mode}-{rows}-rank{r}.json").read_text()) for r in range(args.world)]
            print(json.dumps({"bench": "ddp_vs_dmp", "mode": "DDP" if mode == "plain" else "DMP", "rows": rows,
                              "world": args.world, "samples_per_s": round(recs[0]["samples_per_s"]),
                              "peak_rss_mib": [round(r["peak_rss_mib"]) for r in recs],
                              "embedding_state_mib": [round(r["embedding_state_mib"], 1) for r in recs],
                              "loss": round(recs[0]["loss"], 4)}), flush=True)


# ---------------------------------------------------------------------------------------------- profile
def _timed_steps(trainer: Trainer, steps: int, ddp_kwargs: dict | None = None) -> dict[str, float]:
    """Seconds per step in each part, over `steps` steps after 5 warm-up steps."""
    import torch.distributed as dist

    model, prepared = trainer.model, trainer.prepared
    phase = trainer.phases()[0]
    train_set = trainer.data.training_set(phase.train_on, phase.select)
    opt = torch.optim.AdamW(model.parameters(), lr=trainer.cfg.lr)
    net = trainer._wrap(phase)
    if ddp_kwargs and trainer.dist.distributed:  # the same DDP with other options
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, **ddp_kwargs)
    gen = torch.Generator().manual_seed(0)
    _, batches = train_set.epoch(trainer.cfg.batch_size, gen, trainer.dist)
    parts = {"gather": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    it = iter(batches)
    del prepared
    c0 = 0.0
    for step in range(steps + 5):
        if step == 5:
            c0 = time.process_time()
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        loss = trainer.loss_fn(net(*(batch[k] for k in model.inputs)), batch["label"])
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if step >= 5:
            for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[k] += dt
    cpu = time.process_time() - c0  # CPU seconds of all this process's threads (gloo's included)
    parts = {k: v / steps for k, v in parts.items()}
    parts["cpu_per_step"] = cpu / steps
    # The gradients' all-reduce alone (what DDP overlaps with backward), on the same tensors.
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if dist.is_initialized() and dist.get_world_size() > 1:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(10):
            dist.all_reduce(flat)
        parts["allreduce_alone"] = (time.perf_counter() - t0) / 10
    parts["grad_mib"] = sum(g.numel() * 4 for g in grads) / 2**20
    return parts


def _profile_worker(dataset: str, threads: int, steps: int, out: str, tag: str, ddp_kwargs: dict | None) -> None:
    torch.set_num_threads(threads)
    prepared = _prepared(dataset, None)
    cfg = TrainConfig(epochs=1, batch_size=1024, progress=False, seed=0, num_threads=threads, train_on="targets")
    torch.manual_seed(0)
    model = create_model("DACDR", prepared.spec, **MODEL)
    trainer = Trainer(prepared, model, "DACDR", cfg, Path(out) / tag)
    parts = _timed_steps(trainer, steps, ddp_kwargs)
    ctx = current()
    (Path(out) / f"{tag}-rank{ctx.rank}.json").write_text(json.dumps(parts | {"rank": ctx.rank}))


def profile(args: argparse.Namespace) -> None:
    out = tempfile.mkdtemp(prefix="ddp-profile-")
    opts = {"gradient_as_bucket_view": True, "static_graph": True, "bucket_cap_mb": 64}
    # The 2-process variants twice, interleaved: on a shared box one run of each is within the noise.
    variants = [(1, 2, None), (1, 1, None), (2, 1, None), (2, 1, opts), (2, 1, None), (2, 1, opts)]
    for nproc, threads, ddp_kwargs in variants:
        tag = f"{nproc}x{threads}" + ("-opts" if ddp_kwargs else "")
        if nproc == 1:
            _profile_worker(args.dataset, threads, args.steps, out, tag, None)
        else:
            spawn(_profile_worker, nproc, args.dataset, threads, args.steps, out, tag, ddp_kwargs)
        recs = [json.loads((Path(out) / f"{tag}-rank{r}.json").read_text()) for r in range(nproc)]
        mean = {k: float(np.mean([r[k] for r in recs])) for k in recs[0] if k != "rank"}
        step = sum(mean[k] for k in ("gather", "forward", "backward", "optimizer"))
        print(json.dumps({"bench": "ddp_profile", "processes": nproc, "threads": threads, "ddp": ddp_kwargs or {},
                          "ms_per_step": {k: round(1000 * v, 2) for k, v in mean.items() if k != "grad_mib"},
                          "cpu_share": round(mean["cpu_per_step"] / step, 2),
                          "grad_mib": round(mean["grad_mib"], 2),
                          "samples_per_s": round(nproc * 1024 / step)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("dataset")
    c.add_argument("--steps", type=int, default=60)
    c.add_argument("--rows", default="1000000")
    c.add_argument("--world", type=int, default=2)
    p = sub.add_parser("profile")
    p.add_argument("dataset")
    p.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    {"compare": compare, "profile": profile}[args.cmd](args)


if __name__ == "__main__":
    main()
