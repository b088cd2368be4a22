"""dacdr's PTUPCDR against the official PTUPCDR code on one exported split: seconds per epoch per stage, peak
memory and test MAE / RMSE, each side in its own child process, the two sides alternating (docs/benchmarks.md).

    flock /work/notes/cpu.lock python benchmarks/ptupcdr_vs_official.py --official /tmp/ptupcdr-official \\
        --dataset /tmp/ad --betas 0.2 --epochs 10 --rounds 2 --out /tmp/ptupcdr-bench

`--official` is a folder holding the official code's `run.py` and `models.py` (github.com/easezyc/WSDM2022-PTUPCDR;
never part of this repository); `--dataset` a converted rating dataset (`dacdr convert
configs/experiments/amazon-dense.yaml --out /tmp/ad`). For each beta the split is prepared once and written with
`dacdr.data.ptupcdr.export_ptupcdr` (what `dacdr export-split --mode ptupcdr` writes); the official code then
reads the exported files (through `ptupcdr_official/drive.py --report`, which times its own methods) and dacdr
trains on the prepared split the export was written from, so both see the same users, rows and test set.

Both sides: MF base, emb_dim 10, meta_dim 50, lr 0.01, no weight decay, Adam (dacdr's AdamW with weight decay
0 is Adam), the same epochs per stage, one torch thread, and the official batch sizes per stage (dacdr's
trainer takes one batch size, so the dacdr child sets it per phase: source and target MF 256, meta 128).
Stages: the official code runs TgtOnly (target MF), DataAug (CMF), source MF pre-training, EMCDR and PTUPCDR
(the meta network, on top of TgtOnly's target item embeddings and the source MF); dacdr's PTUPCDR runs source
MF, target MF and meta. DataAug and EMCDR have no counterpart and are reported for the official side only.
Seconds per epoch are the training loop of one epoch (the official `Run.train`; dacdr's `_train_epoch`);
evaluation is timed apart (the official code scores the test set after every epoch of every stage but
source pre-training; dacdr scores its validation users after every meta epoch). Peak memory: each child's
peak resident set (VmHWM), and its resident set once the data are loaded. MAE: the official code prints the
best test MAE over its epochs (it selects on the test set); its last-epoch test MAE is reported too; dacdr
reports the test MAE of the epoch selected on validation users.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DRIVE = HERE / "ptupcdr_official" / "drive.py"
BATCH = {"source": 256, "target": 256, "meta": 128}  # the official batchsize_src / _tgt / _meta
# Comparable stages: (label, official stage, dacdr phase).
PAIRS = [("source MF", "CDR pretraining (source MF)", "source"), ("target MF", "TgtOnly", "target"),
         ("meta network", "PTUPCDR", "meta")]
OFFICIAL_ONLY = ["DataAug", "EMCDR"]


def folder_name(beta: float) -> str:
    """The official layout's folder for a cold-start share: beta 0.2 -> `_8_2` (train 0.8, test 0.2)."""
    return f"_{round(10 - 10 * beta)}_{round(10 * beta)}"


def ratios_of(beta: float) -> tuple[float, float]:
    return round(1 - beta, 1), round(beta, 1)


def data_config(dataset: Path, beta: float, seed: int, max_len: int = 50):
    """The split `dacdr export-split --mode ptupcdr` prepares (cli/experiment.py); `max_len` only sets how much
    of each source history dacdr's batches hold (the split and the exported files do not depend on it)."""
    from dacdr.config import DataConfig

    return DataConfig(path=str(dataset), protocol="users", cold_start_share=beta, split_seed=seed,
                      valid_share=0.1, sequence_cutoff="all", max_len=max_len)


def export(dataset: Path, root: Path, beta: float, seed: int) -> Path:
    """Prepare the split and write it in the official layout under `root/ready/`; returns the folder."""
    from dacdr.data.prepare import prepare
    from dacdr.data.ptupcdr import export_ptupcdr

    prepared = prepare(data_config(dataset, beta, seed))
    spec = prepared.spec
    folder = root / "ready" / folder_name(beta) / f"tgt_{spec.target_domains[0]}_src_{spec.source_domain}"
    return export_ptupcdr(prepared, folder)


# ------------------------------------------------------------------------------------------------ dacdr child
def dacdr_child(dataset: Path, beta: float, seed: int, epochs: int, report: Path, run_dir: Path,
                batch_size: int | None = None, max_len: int = 50, adamw: str = "default",
                schedule: dict[str, dict[str, float]] | None = None, patience: int | None = None,
                checkpoint_every: int = 1, no_share: bool = False, mf_history: bool = False) -> None:
    """Train dacdr's PTUPCDR on the split, timing each epoch of each phase; write the JSON report.
    `batch_size`: one for every phase (dacdr's own way) instead of the official size per stage; `adamw`:
    'foreach' or 'fused' builds the trainer's AdamW with that implementation (a lever measured here only);
    `schedule`: PTUPCDR's own per-phase epochs / batch size / lr (its `schedule` parameter; a batch size there
    wins over the others); `patience`: the trainer's early stopping (default: none, every epoch runs);
    `checkpoint_every`: `train.checkpoint_every` (resume/ every N epochs of a phase and after its last);
    `no_share` / `mf_history`: turn off two of PTUPCDR's speed-ups (one bridge per distinct history in a batch;
    MF batches without histories), to measure each (levers measured here only)."""
    sizes = BATCH if batch_size is None else dict.fromkeys(BATCH, batch_size)
    sizes = {p: int((schedule or {}).get(p, {}).get("batch_size", b)) for p, b in sizes.items()}
    import torch

    sys.path.insert(0, str(DRIVE.parent))
    from drive import memory_mib

    torch.set_num_threads(1)
    if no_share:
        import dacdr.models.ptupcdr as ptupcdr_module

        ptupcdr_module.SHARE_FROM = sys.maxsize
    if mf_history:
        import dataclasses

        from dacdr.models.ptupcdr import PTUPCDR

        phases = PTUPCDR.phases
        PTUPCDR.phases = lambda self: [dataclasses.replace(p, history=True) for p in phases(self)]
    if adamw != "default":  # the trainer looks torch.optim.AdamW up when it builds each phase's optimizer
        torch.optim.AdamW = functools.partial(torch.optim.AdamW, **{adamw: True})
    memory = {"start": memory_mib()}
    from dacdr.config import TrainConfig
    from dacdr.data.prepare import prepare
    from dacdr.models import create_model, data_params
    from dacdr.training.trainer import Trainer

    class PhaseBatchTrainer(Trainer):
        """The official batch size of each stage (the trainer's config has one for all phases)."""

        val_seconds: list[float]

        def _train_epoch(self, phase, train_set, opt, gen, epoch):
            base = self.cfg
            self.cfg = base.model_copy(update={"batch_size": sizes.get(phase.name, base.batch_size)})
            try:
                return super()._train_epoch(phase, train_set, opt, gen, epoch)
            finally:
                self.cfg = base

        def validation_score(self):
            t0 = time.perf_counter()
            out = super().validation_score()
            self.val_seconds.append(time.perf_counter() - t0)
            return out

    t0 = time.perf_counter()
    prepared = prepare(data_config(dataset, beta, seed, max_len))
    load_seconds = time.perf_counter() - t0
    torch.manual_seed(seed)
    model = create_model("PTUPCDR", prepared.spec, **data_params("PTUPCDR", len(prepared.vocabs["user"])),
                         dim=10, meta_dim=50, **({"schedule": schedule} if schedule else {}))
    cfg = TrainConfig(epochs=epochs, batch_size=256, lr=0.01, weight_decay=0.0,
                      patience=epochs if patience is None else patience, seed=seed, num_threads=1, device="cpu",
                      progress=False, checkpoint_every=checkpoint_every)
    trainer = PhaseBatchTrainer(prepared, model, "PTUPCDR", cfg, run_dir)
    trainer.val_seconds = []
    memory["data loaded"] = memory_mib()
    # Building the first optimizer imports torch._dynamo (about 1 s): the official code pays that in its
    # `get_optimizer`, outside its timed calls, so dacdr pays it here, before its timed fit.
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    t0 = time.perf_counter()
    history = trainer.fit(resume=False)
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = trainer.evaluate()
    test_seconds = time.perf_counter() - t0
    stages: dict[str, dict[str, Any]] = {}
    for rec in history:
        s = stages.setdefault(rec["phase"], {"train_seconds": [], "eval_seconds": []})
        s["train_seconds"].append(rec["seconds"])
        s["train_rows"] = rec["samples"]
        s["train_batches"] = -(-rec["samples"] // sizes.get(rec["phase"], cfg.batch_size))
        if "valid_mae" in rec:
            s.setdefault("valid_mae_rmse", []).append([rec["valid_mae"], rec["valid_rmse"]])
    stages["meta"]["eval_seconds"] = trainer.val_seconds
    valid = stages["meta"]["valid_mae_rmse"]
    best = min(range(len(valid)), key=lambda i: valid[i][1])  # the trainer's choice: the lowest RMSE
    target = prepared.spec.target_domains[0]
    test = results["test"]["cold"][target]
    split = prepared.split
    out = {"side": "dacdr", "stages": stages, "load_seconds": load_seconds, "fit_seconds": fit_seconds,
           "test_seconds": test_seconds, "memory_mib": memory | {"end": memory_mib()},
           "results": {"mae": test["mae"], "rmse": test["rmse"], "test_rows": int(split.test_cold.sum()),
                       "best_meta_epoch": 1 + best, "valid_mae_rmse": valid[best]},
           "torch_threads": torch.get_num_threads(), "batch_sizes": sizes, "max_len": max_len,
           "adamw": adamw, "schedule": schedule, "patience": patience, "checkpoint_every": checkpoint_every,
           "no_share": no_share, "mf_history": mf_history}
    report.write_text(json.dumps(out, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------ selection
def grid(dataset: Path, beta: float, seed: int, lines: list[str], out: Path) -> list[dict[str, Any]]:
    """dacdr alone, in this process, once per setting (a JSON object per line: `batch_size`, `lr`, `epochs`,
    `patience` for the trainer, `schedule` for PTUPCDR, `max_len`): the validation MAE / RMSE of the epoch the
    trainer selects, per meta epoch, and the fit's seconds. Test metrics are neither computed nor printed:
    settings are chosen on validation users only."""
    import tempfile

    import torch

    from dacdr.config import TrainConfig
    from dacdr.data.prepare import prepare
    from dacdr.models import create_model, data_params
    from dacdr.training.trainer import Trainer

    torch.set_num_threads(1)
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # the one-time torch._dynamo import, outside the fits
    prepared_by_len: dict[int, Any] = {}
    rows = []
    for line in lines:
        setting = json.loads(line)
        max_len = setting.get("max_len", 50)
        if max_len not in prepared_by_len:
            prepared_by_len[max_len] = prepare(data_config(dataset, beta, seed, max_len))
        prepared = prepared_by_len[max_len]
        torch.manual_seed(seed)
        model = create_model("PTUPCDR", prepared.spec, **data_params("PTUPCDR", len(prepared.vocabs["user"])),
                             dim=10, meta_dim=50, **({"schedule": setting["schedule"]} if "schedule" in setting else {}))
        epochs = setting.get("epochs", 10)
        cfg = TrainConfig(epochs=epochs, batch_size=setting.get("batch_size", 256), lr=setting.get("lr", 0.01),
                          weight_decay=0.0, patience=setting.get("patience", epochs), seed=seed, num_threads=1,
                          device="cpu", progress=False, checkpoint_every=setting.get("checkpoint_every", 1))
        out.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(prepared, model, "PTUPCDR", cfg, tempfile.mkdtemp(dir=out))
        t0 = time.perf_counter()
        history = trainer.fit(resume=False)
        seconds = time.perf_counter() - t0
        meta = [(h["valid_mae"], h["valid_rmse"]) for h in history if h["phase"] == "meta"]
        best = min(range(len(meta)), key=lambda i: meta[i][1])
        row = {"beta": beta, "seed": seed, "setting": setting, "fit_seconds": seconds, "best_meta_epoch": best + 1,
               "valid_mae_rmse": list(meta[best]), "valid_mae_per_meta_epoch": [m for m, _ in meta]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ parent
def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return "n/a"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load " + loadavg()


def run_child(side: str, args: argparse.Namespace, beta: float, rnd: int, out: Path) -> dict[str, Any]:
    """One side in a fresh process (its own peak memory); its report plus the load before and after."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    tag = f"{side}-beta{beta}-round{rnd}"
    report, log = out / f"{tag}.json", out / f"{tag}.log"
    if side == "official":
        r0, r1 = ratios_of(beta)
        env["PYTHONPATH"] = os.pathsep.join([str(DRIVE.parent), str(args.official)])
        cmd = [sys.executable, str(DRIVE), str(out / "export"), str(r0), str(r1), str(args.seed), str(args.epochs),
               "--report", str(report)] + ([] if args.official_batch is None else ["--batch", str(args.official_batch)])
        cwd = out / "official-cwd"  # the official run.py writes a per-user CSV into its working directory
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--dataset", str(args.dataset),
               "--betas", str(beta), "--seed", str(args.seed), "--epochs", str(args.epochs), "--out", str(out),
               "--report", str(report), "--dacdr-max-len", str(args.dacdr_max_len), "--dacdr-adamw", args.dacdr_adamw] \
            + ([] if args.dacdr_batch is None else ["--dacdr-batch", str(args.dacdr_batch)]) \
            + ([] if args.dacdr_schedule is None else ["--dacdr-schedule", json.dumps(args.dacdr_schedule)]) \
            + ([] if args.dacdr_patience is None else ["--dacdr-patience", str(args.dacdr_patience)]) \
            + ["--dacdr-checkpoint-every", str(args.dacdr_checkpoint_every)] \
            + (["--dacdr-no-share"] if args.dacdr_no_share else []) + (["--dacdr-mf-history"] if args.dacdr_mf_history else [])
        cwd = out
    cwd.mkdir(parents=True, exist_ok=True)
    before = uptime()
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{side} (beta {beta}, round {rnd}) failed with exit code {proc.returncode}; "
                         f"its log {log} ends:\n{tail}")
    rep = json.loads(report.read_text())
    return rep | {"wall_seconds": wall, "uptime_before": before, "uptime_after": uptime()}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Median seconds per epoch per stage over every epoch of every round, peak memory, MAE, and the ratios
    (official / dacdr for time: above 1 means dacdr is faster; dacdr / official for memory)."""
    off = [r for r in reports if r["side"] == "official"]
    dac = [r for r in reports if r["side"] == "dacdr"]

    def epochs(side: list[dict[str, Any]], stage: str, key: str = "train_seconds") -> list[float]:
        return [t for r in side for t in r["stages"].get(stage, {}).get(key, [])]

    stages = []
    for label, o_stage, d_phase in PAIRS:
        o, d = median(epochs(off, o_stage)), median(epochs(dac, d_phase))
        stages.append({"stage": label, "official": o, "dacdr": d, "speedup": o / d,
                       "rows": [off[0]["stages"][o_stage]["train_rows"], dac[0]["stages"][d_phase]["train_rows"]],
                       "batches": [off[0]["stages"][o_stage]["train_batches"],
                                   dac[0]["stages"][d_phase]["train_batches"]]})
    n_epochs = len(off[0]["stages"]["PTUPCDR"]["train_seconds"])
    # What PTUPCDR needs end to end, data loaded: the official TgtOnly + source pre-training + PTUPCDR (with the
    # test evaluations it runs after each epoch), against dacdr's fit (three phases, validation, checkpoints)
    # and its test evaluation.
    pipe_off = [sum(sum(r["stages"][s]["train_seconds"]) + sum(r["stages"][s]["eval_seconds"])
                    for s in ("TgtOnly", "CDR pretraining (source MF)", "PTUPCDR")) for r in off]
    pipe_dac = [r["fit_seconds"] + r["test_seconds"] for r in dac]
    train_off = [sum(sum(r["stages"][s]["train_seconds"]) for s in ("TgtOnly", "CDR pretraining (source MF)",
                                                                      "PTUPCDR")) for r in off]
    train_dac = [sum(sum(s["train_seconds"]) for s in r["stages"].values()) for r in dac]
    mem = {k: {"official": median([r["memory_mib"][p]["peak" if k == "peak" else "rss"] for r in off]),
               "dacdr": median([r["memory_mib"][p]["peak" if k == "peak" else "rss"] for r in dac])}
           for k, p in (("peak", "end"), ("rss, data loaded", "data loaded"), ("rss, start", "start"))}
    # what training adds to the process once the data and the model are in memory
    mem["peak - rss, data loaded"] = {side: mem["peak"][side] - mem["rss, data loaded"][side]
                                      for side in ("official", "dacdr")}
    for m in mem.values():
        m["ratio"] = m["dacdr"] / m["official"]
    o_res, d_res = off[0]["results"], dac[0]["results"]
    last = off[0]["stages"]["PTUPCDR"]["test_mae_rmse"][-1]
    return {
        "epochs": n_epochs, "rounds": len(off), "stages": stages,
        "official_only": {s: median(epochs(off, s)) for s in OFFICIAL_ONLY},
        "eval_seconds": {"official test eval (PTUPCDR stage)": median(epochs(off, "PTUPCDR", "eval_seconds")),
                         "dacdr validation (meta phase)": median(epochs(dac, "meta", "eval_seconds"))},
        "train_seconds_ptupcdr": {"official": median(train_off), "dacdr": median(train_dac),
                                  "speedup": median(train_off) / median(train_dac)},
        "pipeline_seconds": {"official": median(pipe_off), "dacdr": median(pipe_dac),
                             "speedup": median(pipe_off) / median(pipe_dac)},
        "load_seconds": {"official": median([r["load_seconds"] for r in off]),
                         "dacdr": median([r["load_seconds"] for r in dac])},
        "memory_mib": mem,
        "mae_rmse": {
            "official (best test epoch)": [o_res["ptupcdr_mae"], o_res["ptupcdr_rmse"]],
            "official (last epoch)": last,
            "dacdr (validation-selected)": [d_res["mae"], d_res["rmse"]],
        },
        "test_rows": {"official": off[0]["stages"]["PTUPCDR"]["eval_rows"], "dacdr": d_res["test_rows"]},
        "dacdr_best_meta_epoch": d_res["best_meta_epoch"],
        "dacdr_batch_sizes": dac[0].get("batch_sizes"),
        "official_batch_sizes": {k: off[0].get("config", {}).get("src_tgt_pairs", {}).get("1", {}).get(f"batchsize_{k}")
                                 for k in ("src", "tgt", "meta")},
        "dacdr_max_len": dac[0].get("max_len", 50),
        "dacdr_adamw": dac[0].get("adamw", "default"),
        "dacdr_schedule": dac[0].get("schedule"),
        "dacdr_patience": dac[0].get("patience"),
        "dacdr_checkpoint_every": dac[0].get("checkpoint_every", 1),
        "dacdr_no_share": dac[0].get("no_share", False),
        "dacdr_mf_history": dac[0].get("mf_history", False),
        "dacdr_epochs": {p: len(st["train_seconds"]) for p, st in dac[0]["stages"].items()},
        "dacdr_valid_mae_rmse": d_res.get("valid_mae_rmse"),
        "results_repeat": {"official": len({json.dumps(r["results"]) for r in off}) == 1,
                           "dacdr": len({json.dumps(r["results"]) for r in dac}) == 1},
    }


def markdown(beta: float, s: dict[str, Any]) -> str:
    sizes = s.get("dacdr_batch_sizes") or BATCH
    batches = "the official batch size per stage" if sizes == BATCH else \
        "dacdr batch size " + "/".join(str(sizes[p]) for p in ("source", "target", "meta")) + " (official 256/256/128)"
    epochs = s.get("dacdr_epochs") or {}
    dacdr_epochs = "/".join(str(epochs.get(p, s["epochs"])) for p in ("source", "target", "meta"))
    lines = [f"**beta {beta:.0%}** (official: {s['epochs']} epochs per stage; dacdr: {dacdr_epochs} epochs, "
             f"schedule {json.dumps(s.get('dacdr_schedule'))}, checkpoint_every {s.get('dacdr_checkpoint_every', 1)}"
             f"{', no shared bridges' if s.get('dacdr_no_share') else ''}"
             f"{', MF batches with histories' if s.get('dacdr_mf_history') else ''}; "
             f"{s['rounds']} rounds alternating, {batches}, "
             f"dacdr history length {s.get('dacdr_max_len', 50)} (official 20), dacdr AdamW "
             f"{s.get('dacdr_adamw', 'default')}; medians)",
             "", "| stage | rows (official / dacdr) | batches | official s/epoch | dacdr s/epoch | dacdr speed-up |",
             "|---|---|---|---|---|---|"]
    for st in s["stages"]:
        lines.append(f"| {st['stage']} | {st['rows'][0]:,} / {st['rows'][1]:,} | {st['batches'][0]} / "
                     f"{st['batches'][1]} | {st['official']:.3f} | {st['dacdr']:.3f} | {st['speedup']:.2f}x |")
    t, p = s["train_seconds_ptupcdr"], s["pipeline_seconds"]
    lines.append(f"| PTUPCDR training, all its stages (s) | | | {t['official']:.2f} | {t['dacdr']:.2f} | "
                 f"{t['speedup']:.2f}x |")
    lines.append(f"| ... with evaluation, checkpoints (s) | | | {p['official']:.2f} | {p['dacdr']:.2f} | "
                 f"{p['speedup']:.2f}x |")
    for name, v in s["official_only"].items():
        lines.append(f"| {name} (official only) | | | {v:.3f} | | |")
    lines += ["", "| memory (MiB) | official | dacdr | dacdr / official |", "|---|---|---|---|"]
    for k, m in s["memory_mib"].items():
        lines.append(f"| {k} | {m['official']:.0f} | {m['dacdr']:.0f} | {m['ratio']:.2f} |")
    lines += ["", "| test MAE / RMSE | |", "|---|---|"]
    for k, (mae, rmse) in s["mae_rmse"].items():
        lines.append(f"| {k} | {mae:.4f} / {rmse:.4f} |")
    if s.get("dacdr_valid_mae_rmse"):
        mae, rmse = s["dacdr_valid_mae_rmse"]
        lines.append(f"| dacdr, validation users (its selection) | {mae:.4f} / {rmse:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", type=Path, help="folder with the official run.py and models.py")
    ap.add_argument("--dataset", type=Path, required=True, help="a converted rating dataset (dacdr layout)")
    ap.add_argument("--betas", type=float, nargs="+", default=[0.2])
    ap.add_argument("--seed", type=int, default=900)
    ap.add_argument("--epochs", type=int, default=10, help="epochs of every stage, both sides")
    ap.add_argument("--rounds", type=int, default=2, help="runs per side and beta, alternating which goes first")
    ap.add_argument("--official-batch", type=int, help="official code: this training batch size in every stage "
                    "instead of its own (a control run: how much of the speed-up the batch size alone gives it)")
    ap.add_argument("--dacdr-batch", type=int, help="dacdr: this batch size in every phase (its own way) instead "
                    "of the official size per stage (256 / 256 / 128)")
    ap.add_argument("--dacdr-max-len", type=int, default=50, help="dacdr: source history positions per sample "
                    "(the official code keeps the last 20 rated above 3)")
    ap.add_argument("--dacdr-adamw", choices=["default", "foreach", "fused"], default="default",
                    help="dacdr: the AdamW implementation (default: torch's choice, single-tensor on CPU)")
    ap.add_argument("--dacdr-schedule", type=json.loads, help="dacdr: PTUPCDR's per-phase settings as JSON, e.g. "
                    "'{\"source\": {\"batch_size\": 2048, \"lr\": 0.02, \"epochs\": 5}, \"meta\": {\"epochs\": 2}}'")
    ap.add_argument("--dacdr-patience", type=int, help="dacdr: early-stopping patience of the meta phase "
                    "(default: none, every epoch runs)")
    ap.add_argument("--dacdr-checkpoint-every", type=int, default=1, help="dacdr: train.checkpoint_every (resume/ "
                    "every N epochs of a phase and after its last; default 1, every epoch)")
    ap.add_argument("--dacdr-no-share", action="store_true", help="dacdr: decode PTUPCDR's bridge for every row, "
                    "not once per distinct history in a batch (a lever measured here only)")
    ap.add_argument("--dacdr-mf-history", action="store_true", help="dacdr: gather the source histories in the MF "
                    "phases too, which do not read them (a lever measured here only)")
    ap.add_argument("--grid", type=Path, help="dacdr alone: one setting per line of this file (JSON), validation "
                    "metrics only, for each beta (see `grid`); writes OUT/grid.jsonl")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        dacdr_child(args.dataset, args.betas[0], args.seed, args.epochs, args.report,
                    args.out / f"dacdr-run-{os.getpid()}", args.dacdr_batch, args.dacdr_max_len, args.dacdr_adamw,
                    args.dacdr_schedule, args.dacdr_patience, args.dacdr_checkpoint_every, args.dacdr_no_share,
                    args.dacdr_mf_history)
        return
    if args.grid is not None:
        lines = [x for x in args.grid.read_text().splitlines() if x.strip() and not x.lstrip().startswith("#")]
        rows = [r for beta in args.betas for r in grid(args.dataset, beta, args.seed, lines, args.out / "runs")]
        (args.out / "grid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return
    if args.official is None or not (args.official / "run.py").is_file() or not (args.official / "models.py").is_file():
        raise SystemExit(f"--official {args.official}: expected a folder with the official run.py and models.py")
    if not (args.dataset / "dataset.json").is_file():
        raise SystemExit(f"--dataset {args.dataset}: no dataset.json there (convert the data first)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = uptime()
    summaries, reports_all = {}, {}
    for beta in args.betas:
        export(args.dataset, out / "export", beta, args.seed)
        reports = []
        for rnd in range(args.rounds):
            for side in (("official", "dacdr") if rnd % 2 == 0 else ("dacdr", "official")):
                rep = run_child(side, args, beta, rnd, out)
                print(f"beta {beta} round {rnd} {side}: {rep['wall_seconds']:.1f} s wall; {rep['uptime_after']}",
                      flush=True)
                reports.append(rep)
        summaries[str(beta)] = summarise(reports)
        reports_all[str(beta)] = reports
        print(markdown(beta, summaries[str(beta)]), flush=True)
    meta = {"command": " ".join(sys.argv), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{platform.platform()}, Python {platform.python_version()}", "uptime_start": start,
            "uptime_end": uptime()}
    (out / "summary.json").write_text(json.dumps({"meta": meta, "summaries": summaries, "reports": reports_all},
                                                 indent=1) + "\n")
    print(f"{meta['uptime_start']}\n{meta['uptime_end']}\nwrote {out / 'summary.json'}")


if __name__ == "__main__":
    main()
