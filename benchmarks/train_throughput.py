"""DACDR training and inference throughput on the demo preset, and peak memory, per batch size.

    python benchmarks/train_throughput.py --threads 2 --out docs/benchmarks-throughput.json
    taskset -c 1 python benchmarks/train_throughput.py --threads 1 --batch-sizes 1024 --rounds 5 \
        --models DACDR,DACDR+textbook,DNN-multi --profile     # before/after in one run, and a profile
    ... --profile --profile-rounds 5      # the models profiled in turn, median self CPU per op, side by side

Training: samples/s over a fixed number of optimizer steps after warm-up (forward, backward, AdamW step and
batch gathering included). The models are timed in turn, `--rounds` times per batch size, so that a change
in the box's load hits all of them; each row gives the median over the rounds and the median of the
per-round ratios to the last model listed (DNN-multi by default: mean pooling, no attention, the in-run
reference for what the attention costs). Inference: samples/s of `predict` in eval mode. Peak memory: the
process's peak RSS (ru_maxrss) after each batch size, and the tensor bytes a batch holds.

A model may carry levers after `+`: an attention form, `textbook` (DACDR's attention before the weight
absorption: the whole sequence projected through W_K and W_V, as tests/models/test_attention_parity.py keeps it)
or one of the intermediate forms (`absorbed`, `absorbed-lse`, `absorbed-lse-contig`: see `_staged`), without
which the library's own form runs (every earlier form also takes DACDR's two steps one by one); `stepwise` (the
library's form, but DACDR's two steps taken one by one instead of fused into one pass over the sequence for the
scores and one for the weighted means); `graph-scoring` (both steps fused, but their scoring left to autograd's
graph of small ops instead of the one function with a hand-written backward, layers._TwoStepAttention);
`compile-scoring` (that function replaced by torch.compile of the same maths written as autograd ops; the
compile, and one recompile for an epoch's last, smaller batch, fall in the warm-up or in one round); `compile` (torch.compile of the model); `bf16` (CPU autocast to bfloat16
in the forward pass; not the same results); `chunkN`, e.g. `chunk256` (the one-function scoring called on
slices of N samples, so that a slice's sequence stays in the core's cache between the products; the same maths);
`no-prior` (DACDR without dacdr 0.5's domain prior on step 1); `no-umean` (without dacdr 0.6's history mean in
the encoder; with `no-prior`: 0.4's model); `flat-prior` (the domain prior as
0.5 first computed it: a flat gather of [B, L] per table instead of the tables' rows summed first and one gather
per item field; the same maths); `sep-mean` (0.6's history mean as a pass of its own, as first written, instead
of a row of the one-function scoring's weighted means; the same maths).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import resource
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import dacdr.models.dacdr as dacdr_module
from dacdr.config import DataConfig
from dacdr.data.batches import BatchGatherer
from dacdr.data.prepare import prepare
from dacdr.data.synthetic import generate
from dacdr.evaluation import predict
from dacdr.models import create_model
from dacdr.models.attention_reference import TEXTBOOK_METHODS
from dacdr.models.dacdr import DACDR
from dacdr.models.layers import _MASKED, CrossAttention, pool_over, scores_over

# Attention forms, oldest first (each adds one lever to the one before; no lever = the library's current form),
# then levers applied on top of whichever form runs.
FORMS = ("textbook", "absorbed", "absorbed-lse", "absorbed-lse-contig")
LEVERS = (*FORMS, "stepwise", "graph-scoring", "compile-scoring", "compile", "bf16", "chunkN", "no-prior", "no-umean",
          "flat-prior", "sep-mean")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _staged(stage: int):
    """The intermediate forms between the textbook one and the library's, as CrossAttention methods:
    1 `absorbed`: W_K absorbed into the queries per head, W_V applied after the weighted mean (autograd's
    products, logsumexp for the log-mass of both steps); 2 `absorbed-lse`: + the log-mass only where asked, from
    the softmax's top weight, and weights made contiguous before the pooling product; 3 `absorbed-lse-contig`:
    + the products with contiguous sequence gradients (layers.scores_over / pool_over). The library's form adds
    the merged W_Q W_K and W_O W_V maps and the mask as an additive bias."""

    def weights_and_mass(self, query, keys, mask, log_prior=None, with_mass=True):
        b, m, k = query.shape
        q = self.w_q(query).view(b, m, self.heads, self.head_dim).transpose(1, 2)
        qk = (q @ (self.w_k.weight.view(self.heads, self.head_dim, k) * self.scale)).reshape(b, self.heads * m, k)
        logits = scores_over(qk, keys) if stage >= 3 else qk @ keys.transpose(1, 2)
        logits = logits.view(logits.shape[0], self.heads, m, logits.shape[2])
        if log_prior is not None:
            logits = logits + log_prior[:, None, None, :]
        keep = mask[:, None, None, :]
        logits = logits.masked_fill(~keep, _MASKED)
        soft = torch.softmax(logits, dim=-1)
        weights = soft * keep.to(logits.dtype)
        if not with_mass:
            return weights, None
        valid = keep.to(logits.dtype).sum(-1)
        if stage >= 2:
            top, at = logits.max(dim=-1, keepdim=True)
            log_mass = (top - torch.log(soft.gather(-1, at))).squeeze(-1)
        else:
            log_mass = torch.logsumexp(logits, dim=-1)
        if log_prior is None:
            log_mass = log_mass - torch.log(valid.clamp_min(1.0))
        return weights, torch.where(valid > 0, log_mass, torch.zeros_like(log_mass))

    def weights(self, query, keys, mask, log_prior=None):
        return weights_and_mass(self, query, keys, mask, log_prior, with_mass=stage < 2)[0]

    def values(self, weights, values):
        k = values.shape[-1]
        hw, m = weights.shape[1], weights.shape[2]
        rows = weights.reshape(weights.shape[0], hw * m, weights.shape[3])
        rows = rows.contiguous() if stage >= 2 else rows
        pooled = pool_over(rows, values) if stage >= 3 else rows @ values
        pooled = pooled.view(pooled.shape[0], hw, m, k)
        w_v = self.w_v.weight.view(self.heads, self.head_dim, k).transpose(1, 2)
        out = (pooled @ w_v).transpose(1, 2)
        return self.w_o(out.reshape(out.shape[0], m, k))

    return {"weights_and_mass": weights_and_mass, "weights": weights, "values": values}


def _textbook_methods():
    return dict(TEXTBOOK_METHODS)


@contextlib.contextmanager
def attention_form(form: str) -> Iterator[None]:
    """CrossAttention in one of FORMS for the duration (the same parameters and results; only the cost differs)."""
    methods = _textbook_methods() if form == "textbook" else _staged(FORMS.index(form))
    saved = {n: CrossAttention.__dict__[n] for n in methods}
    for n, f in methods.items():
        setattr(CrossAttention, n, f)
    try:
        with stepwise():  # the fused path would bypass the patched methods
            yield
    finally:
        for n, f in saved.items():
            setattr(CrossAttention, n, f)


@contextlib.contextmanager
def class_flag(name: str, value: object) -> Iterator[None]:
    """A DACDR class attribute (a switch, or a method) set for the duration."""
    saved = getattr(DACDR, name)
    setattr(DACDR, name, value)
    try:
        yield
    finally:
        setattr(DACDR, name, saved)


def _scoring_graph(q, s, mask, mix, md, mass_d=False, mass_i=False, bias_d=None, mean=False):
    """`layers.two_step_attention`'s maths as plain autograd ops (no hand-written backward), for torch.compile."""
    keep = mask.to(s.dtype)
    logits = q @ s.transpose(1, 2) + ((1.0 - keep) * _MASKED)[:, None, :]
    if bias_d is not None:  # step 1's domain prior, on its rows only
        logits = torch.cat([logits[:, :md] + bias_d[:, None, :], logits[:, md:]], dim=1)
    soft_d = torch.softmax(logits[:, :md], dim=-1)
    w_d = soft_d * keep[:, None, :]
    alpha = w_d.mean(1)
    uniform = keep / keep.sum(1, keepdim=True).clamp_min(1.0)
    prior = alpha if mix is None else (1 - mix) * alpha + mix * uniform
    x_i = logits[:, md:] + torch.log(prior.clamp_min(1e-12))[:, None, :]
    soft_i = torch.softmax(x_i, dim=-1)
    w = torch.cat([w_d, soft_i * keep[:, None, :]], dim=1)
    valid = keep.sum(-1, keepdim=True) > 0
    lm_d = lm_i = None
    if mass_d:
        lm = logits[:, :md].amax(-1) - torch.log(soft_d.amax(-1)) - torch.log(keep.sum(-1, keepdim=True).clamp_min(1.0))
        lm_d = torch.where(valid, lm, torch.zeros_like(lm))
    if mass_i:
        lm = x_i.amax(-1) - torch.log(soft_i.amax(-1))
        lm_i = torch.where(valid, lm, torch.zeros_like(lm))
    rows = torch.cat([w, uniform[:, None, :]], dim=1) if mean else w  # the history's mean as a last row
    return rows @ s, w, alpha, lm_d, lm_i


_compiled_scoring = None


@contextlib.contextmanager
def compiled_scoring() -> Iterator[None]:
    """DACDR's one-function scoring replaced by torch.compile (inductor) of the same maths as autograd ops: the
    compiler fuses the elementwise passes and writes their backward; the products stay library calls."""
    global _compiled_scoring
    if _compiled_scoring is None:
        _compiled_scoring = torch.compile(_scoring_graph, dynamic=False)
    saved = dacdr_module.two_step_attention
    dacdr_module.two_step_attention = _compiled_scoring
    try:
        yield
    finally:
        dacdr_module.two_step_attention = saved


@contextlib.contextmanager
def chunked_scoring(size: int) -> Iterator[None]:
    """DACDR's one-function scoring called on slices of `size` samples (outputs concatenated; autograd
    concatenates the slices' sequence gradients): the same maths, a slice's [size, L, k] sequence in cache."""
    real = dacdr_module.two_step_attention

    def chunked(q, s, mask, mix, md, mass_d=False, mass_i=False, bias_d=None, mean=False):
        if s.shape[0] <= size:
            return real(q, s, mask, mix, md, mass_d, mass_i, bias_d, mean)
        biases = bias_d.split(size) if bias_d is not None else [None] * len(s.split(size))
        parts = [real(qc, sc, mc, mix, md, mass_d, mass_i, bc, mean)
                 for qc, sc, mc, bc in zip(q.split(size), s.split(size), mask.split(size), biases, strict=True)]
        return tuple(None if parts[0][j] is None else torch.cat([p[j] for p in parts]) for j in range(5))

    dacdr_module.two_step_attention = chunked
    try:
        yield
    finally:
        dacdr_module.two_step_attention = real


@contextlib.contextmanager
def stepwise() -> Iterator[None]:
    """DACDR's two steps one by one (the fused passes off) for the duration."""
    saved = DACDR.fuse_steps
    DACDR.fuse_steps = False
    try:
        yield
    finally:
        DACDR.fuse_steps = saved


def _flat_prior(self, seq: torch.Tensor, item: torch.Tensor, domain: torch.Tensor) -> torch.Tensor | None:
    """DACDR.step1_prior as first written (0.5): one flat gather of [B, L] per table."""
    if self.domain_prior is None:
        return None
    seq_ids, _ = self.embeddings.item_ids(seq, item)
    dom_ids = self.embeddings.domain_ids(domain)
    out = None
    for (j, g), table in zip(self.prior_pairs, self.domain_prior, strict=True):
        term = table.reshape(-1)[dom_ids[:, j, None] * table.shape[1] + seq_ids[..., g]]
        out = term if out is None else out + term
    return self.domain_prior_gain * out


def model_params(levers: set[str]) -> dict[str, object]:
    """Constructor parameters a lever sets (`no-prior`: DACDR without its domain prior; `no-umean`: without the
    history's mean in the encoder)."""
    return ({"domain_prior": False} if "no-prior" in levers else {}) | (
        {"history_mean": False} if "no-umean" in levers else {})


def parse_spec(spec: str) -> tuple[str, set[str]]:
    """`DACDR+textbook+bf16` -> ("DACDR", {"textbook", "bf16"})."""
    name, *levers = spec.split("+")
    unknown = {lever for lever in levers if not re.fullmatch(r"chunk[1-9]\d*", lever)} - set(LEVERS)
    if unknown:
        raise SystemExit(f"--models {spec!r}: unknown lever(s) {sorted(unknown)}; known: {', '.join(LEVERS)}")
    if len(set(levers) & set(FORMS)) > 1:
        raise SystemExit(f"--models {spec!r}: at most one attention form of {', '.join(FORMS)}")
    return name, set(levers)


def lever_context(levers: set[str], device: torch.device) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for form in set(levers) & set(FORMS):
        stack.enter_context(attention_form(form))
    if "stepwise" in levers:
        stack.enter_context(stepwise())
    if "graph-scoring" in levers:
        stack.enter_context(class_flag("fused_core", False))
    if "compile-scoring" in levers:
        stack.enter_context(compiled_scoring())
    for lever in levers:
        if lever.startswith("chunk"):
            stack.enter_context(chunked_scoring(int(lever[len("chunk"):])))
    if "flat-prior" in levers:
        stack.enter_context(class_flag("step1_prior", _flat_prior))
    if "sep-mean" in levers:
        stack.enter_context(class_flag("fused_mean", False))
    if "bf16" in levers:
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    return stack


class Trainer:
    """One model's training loop, resumable: each call times `steps` more optimizer steps."""

    def __init__(self, model, gatherer, idx, batch_size: int, levers: set[str], device: torch.device):
        self.model, self.levers, self.device = model, levers, device
        if "compile" in levers:
            model.compile()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        gen = torch.Generator().manual_seed(0)

        def forever():  # epochs back to back: a timed point may need more samples than one epoch holds
            while True:
                yield from gatherer.iterate(idx, batch_size, shuffle=True, generator=gen)

        self.batches = forever()

    def step(self) -> int:
        b = next(self.batches)
        if self.device.type != "cpu":
            b = {k: v.to(self.device, non_blocking=True) for k, v in b.items()}
        with lever_context(self.levers, self.device):
            loss = self.loss_fn(self.model.score(b).float(), b["label"])
        self.opt.zero_grad(set_to_none=True)
        with lever_context(self.levers - {"bf16"}, self.device):  # autocast covers the forward pass only
            loss.backward()
        self.opt.step()
        return len(b["label"])

    def rate(self, steps: int, clock=time.perf_counter) -> float:
        self.model.train()
        _sync(self.device)
        t0, seen = clock(), 0
        for _ in range(steps):
            seen += self.step()
        _sync(self.device)
        return seen / (clock() - t0)


def profile_steps(trainer: Trainer, steps: int = 10, top: int = 15) -> str:
    """torch.profiler's table of the ops with the most self CPU time over `steps` training steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            trainer.step()
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40, max_shapes_column_width=60)


def profile_rounds(trainers: dict[str, Trainer], rounds: int, steps: int = 5, top: int = 40) -> str:
    """Self CPU ms per step by op and input shape, the median over `rounds` in which the models are profiled in
    turn (a shared box's load then hits all of them), side by side with the first model's top ops first."""
    from torch.profiler import ProfilerActivity, profile

    per: dict[str, dict[str, list[float]]] = {spec: {} for spec in trainers}
    for _ in range(rounds):
        for spec, trainer in trainers.items():
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for _ in range(steps):
                    trainer.step()
            for e in prof.key_averages(group_by_input_shape=True):
                key = f"{e.key} {str(e.input_shapes)[:70]}"
                per[spec].setdefault(key, []).append(e.self_cpu_time_total / steps / 1000)
    med = {spec: {k: statistics.median(v + [0.0] * (rounds - len(v))) for k, v in ops.items()}
           for spec, ops in per.items()}
    first = next(iter(med))
    keys = sorted(set().union(*med.values()), key=lambda k: -med[first].get(k, 0.0))
    lines = [" | ".join(f"{spec[:20]:>20}" for spec in med) + " | op and input shapes",
             " | ".join(f"{sum(ops.values()):20.2f}" for ops in med.values()) + " | all ops (self CPU ms per step)"]
    lines += [" | ".join(f"{med[spec].get(k, 0.0):20.2f}" for spec in med) + f" | {k}" for k in keys[:top]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/synthetic-demo-seed0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="256,512,1024,2048,4096")
    ap.add_argument("--samples-per-point", type=int, default=60_000,
                    help="training samples timed per model, batch size and round")
    ap.add_argument("--rounds", type=int, default=1, help="the models are timed in turn this many times")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per model and batch size")
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (batches are gathered on the CPU either way)")
    ap.add_argument("--models", default="DACDR,DNN-multi",
                    help="comma-separated; the last is the reference of the ratios; levers after '+': "
                    + ", ".join(LEVERS))
    ap.add_argument("--profile", action="store_true",
                    help="print torch.profiler's top ops of each model at the first batch size")
    ap.add_argument("--profile-rounds", type=int, default=0,
                    help="with --profile: profile the models in turn this many rounds (5 steps each) and print the "
                    "median self CPU ms per step of each op, the models side by side")
    ap.add_argument("--no-inference", action="store_true")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the process's CPU time (one thread on a shared box: what other jobs take is not "
                    "counted; with several threads it sums them, so use wall)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not (data / "dataset.json").exists():
        generate("demo", data, seed=0)
    prepared = prepare(DataConfig(path=str(data), max_len=args.max_len))
    g = BatchGatherer(prepared)
    idx = prepared.split.train_target
    specs = [(spec, *parse_spec(spec)) for spec in args.models.split(",")]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    ref_spec = specs[-1][0]
    rows = []
    for bs in map(int, args.batch_sizes.split(",")):
        trainers = {}
        for spec, name, levers in specs:
            torch.manual_seed(0)  # the same initial weights for a model with or without levers
            trainers[spec] = Trainer(create_model(name, prepared.spec, **model_params(levers)).to(device), g, idx, bs,
                                     levers, device)
            for _ in range(args.warmup):
                trainers[spec].step()
        steps = max(5, args.samples_per_point // bs)
        rates: dict[str, list[float]] = {spec: [] for spec, *_ in specs}
        for _ in range(args.rounds):
            for spec, *_ in specs:
                rates[spec].append(trainers[spec].rate(steps, clock))
        batch_mb = sum(t.numel() * t.element_size() for t in g.gather(idx[:bs]).values()) / 2**20
        for spec, *_ in specs:
            ratios = [a / b for a, b in zip(rates[spec], rates[ref_spec], strict=True)]
            rows.append({"model": spec, "batch_size": bs, "train_samples_per_s": round(statistics.median(rates[spec])),
                         f"ratio_to_{ref_spec}": round(statistics.median(ratios), 3),
                         "rounds": [round(r) for r in rates[spec]], "batch_tensor_mb": round(batch_mb, 2),
                         "peak_rss_mb": round(peak_rss_mb())}
                        | ({"peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20)}
                           if device.type == "cuda" else {}))
            print(rows[-1], flush=True)
        if args.profile and args.profile_rounds and bs == int(args.batch_sizes.split(",")[0]):
            print(f"--- profile: batch {bs}, {args.profile_rounds} rounds of 5 steps, {args.threads} thread(s)")
            print(profile_rounds(trainers, args.profile_rounds), flush=True)
        elif args.profile and bs == int(args.batch_sizes.split(",")[0]):
            for spec, *_ in specs:
                print(f"--- profile: {spec}, batch {bs}, 10 steps, {args.threads} thread(s)")
                print(profile_steps(trainers[spec]), flush=True)
        del trainers
    for spec, name, levers in [] if args.no_inference else specs:
        if "compile" in levers:  # not timed: eval batches of another size would recompile inside the timing
            continue
        torch.manual_seed(0)
        model = create_model(name, prepared.spec, **model_params(levers)).to(device)
        test = prepared.split.test
        with lever_context(levers, device):
            predict(model, g, test[:8192])  # warm-up
            t0 = clock()
            predict(model, g, test, batch_size=8192)
        _sync(device)
        inf = len(test) / (clock() - t0)
        rows.append({"model": spec, "inference_samples_per_s": round(inf), "eval_batch_size": 8192,
                     "n": len(test)})
        print(rows[-1], flush=True)
    n_params = sum(p.numel() for p in create_model("DACDR", prepared.spec).parameters())
    report = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": args.threads,
              "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__, "max_len": args.max_len, "dacdr_parameters": n_params,
              "train_samples": len(idx), "rounds": args.rounds, "clock": args.clock, "load_average": _load(), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in __import__("os").getloadavg()]
    except OSError:
        return None


if __name__ == "__main__":
    main()
