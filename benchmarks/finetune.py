"""Fine-tuning benchmark: add a fourth target domain to a DACDR trained on three, against three alternatives.

A synthetic world with four targets is generated; `target_4` (its domain row, item listings and rows) is
dropped for the base training. Per seed, on the same test day, cold-start users of `target_4`:

- **no fine-tuning**: the base model with `target_4`'s rows added (mean-initialised), nothing trained;
- **fine-tuned**: `dacdr.recipes.finetune` (new rows + attention projections, on `target_4`'s rows);
- **full retraining**: DACDR trained from scratch on all four targets;
- **new domain alone**: DACDR trained from scratch on `target_4`'s rows only.

    python benchmarks/finetune.py --seeds 3 --users 8000 --out runs/bench-finetune

Training times are `Trainer.fit` wall seconds (data preparation excluded, cached for every variant).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import polars as pl
import torch

from dacdr.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dacdr.data.dataset import load_dataset, write_dataset
from dacdr.data.prepare import prepare
from dacdr.data.synthetic import TargetConfig, generate, get_preset
from dacdr.models import create_model
from dacdr.recipes.finetune import finetune
from dacdr.training.finetune import restrict_split
from dacdr.training.trainer import Trainer

NEW = "target_4"


def drop_domain(full: Path, base: Path, domain: str) -> None:
    """Write to `base` the dataset at `full` without `domain` (its domain row, item listings and rows)."""
    data = load_dataset(full)
    keep = pl.col("domain") != domain
    spec = data.spec.model_copy(update={"target_domains": [d for d in data.spec.target_domains if d != domain]})
    write_dataset(type(data)(spec=spec, interactions=data.interactions.filter(keep),
                             items=data.items.filter(keep), domains=data.domains.filter(keep), path=None), base)


def make_worlds(root: Path, users: int) -> tuple[Path, Path]:
    full, base = root / "data-full", root / "data-base"
    if not (full / "dataset.json").exists():
        preset = get_preset("demo")
        targets = [t.model_dump() for t in preset.targets] + [
            TargetConfig(page_type="banner", business_line="fashion", ctr=0.07, overlap=0.85, reach=0.3).model_dump()
        ]
        world = get_preset("demo", n_users=users, targets=targets).model_copy(update={"name": "synthetic-demo-4targets"})
        generate(world, full, seed=0)
    if not (base / "dataset.json").exists():
        drop_domain(full, base, NEW)
    return full, base


def train(prepared, cfg: RunConfig, run_dir: Path) -> tuple[dict, float]:
    """Train from scratch; returns (test results, fit seconds)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    import yaml

    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model.name, prepared.spec, **cfg.model.params)
    trainer = Trainer(prepared, model, cfg.model.name, cfg.train, run_dir)
    t0 = time.perf_counter()
    trainer.fit(resume=False)
    seconds = time.perf_counter() - t0
    return trainer.evaluate(), seconds


VARIANTS = ("no fine-tuning", "fine-tuned", "full retraining", "new domain alone")


def compare_seed(rows: dict[str, list[dict]], seed: int, *, new: str, keys: tuple[str, ...],
                 full: tuple[Path, object], base: tuple[Path, object], alone_prep, train_cfg: TrainConfig,
                 out: Path, ft_epochs: int, ft_lr: float, model: ModelConfig | None = None,
                 data: dict | None = None) -> dict:
    """One seed of the four variants (and the base training) on `new`, appended to `rows`.

    `full` / `base` are (dataset directory, its PreparedData, prepared with the `DataConfig` fields `data`:
    the runs record them, and `finetune` re-reads them); `keys` the metrics kept (e.g. auc, or mae and rmse), each under
    `key` (cold-start users) and `key_all` (all test users). Returns the full retraining's results (for the
    synthetic oracle)."""
    model, data = model or ModelConfig(), data or {}
    (full_dir, full_prep), (base_dir, base_prep) = full, base
    cfg_base = RunConfig(data=DataConfig(path=str(base_dir), **data), model=model, train=train_cfg)
    cfg_full = RunConfig(data=DataConfig(path=str(full_dir), **data), model=model, train=train_cfg)

    def pick(cold: dict, every: dict) -> dict:
        return {k: cold[k] for k in keys} | {f"{k}_all": every[k] for k in keys}

    _, base_s = train(base_prep, cfg_base, out / f"base-seed{seed}")
    rows["base training"].append({"seconds": base_s})
    # a finished run in the fine-tuning directory would be resumed, not redone: start it afresh
    shutil.rmtree(out / f"finetuned-seed{seed}", ignore_errors=True)
    report = finetune(out / f"base-seed{seed}", full_dir, new, out / f"finetuned-seed{seed}",
                      epochs=ft_epochs, lr=ft_lr, seed=seed, progress=False, log=print)
    rows["no fine-tuning"].append(pick(report["before"]["cold"], report["before"]["all"]) | {"seconds": 0.0})
    rows["fine-tuned"].append(pick(report["after"]["cold"], report["after"]["all"]) | {
        "seconds": report["train_seconds"], "trainable": report["trainable_parameters"],
        "total": report["total_parameters"]})
    full_res, full_s = train(full_prep, cfg_full, out / f"full-seed{seed}")
    rows["full retraining"].append(pick(full_res["test"]["cold"][new], full_res["test"]["all"][new])
                                   | {"seconds": full_s})
    alone_res, alone_s = train(alone_prep, cfg_full, out / f"alone-seed{seed}")
    rows["new domain alone"].append(pick(alone_res["test"]["cold"][new], alone_res["test"]["all"][new])
                                    | {"seconds": alone_s})
    print(json.dumps({k: v[-1] for k, v in rows.items()}), flush=True)
    return full_res


def summary_table(rows: dict[str, list[dict]], new: str, keys: tuple[str, ...], all_users: bool = True) -> list[str]:
    """Markdown: parameter share, one row per variant (mean ± std over seeds), and the gap / time ratio.

    `all_users=False` leaves out the all-users columns (P2: every test user is a cold-start user)."""

    def ms(key: str, name: str) -> str:
        vals = [r[key] for r in rows[name]]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.1f} ± {sd:.1f}" if key == "seconds" else \
            f"{statistics.mean(vals):.4f} ± {sd:.4f}"

    ft = rows["fine-tuned"][0]
    names = [k.upper() for k in keys]
    cols = [*keys, *(f"{k}_all" for k in keys)] if all_users else list(keys)
    lines = [
        f"fine-tuned parameters: {ft['trainable']:,} of {ft['total']:,} ({100 * ft['trainable'] / ft['total']:.2f}%)",
        "",
        "| model | " + "".join(f"cold-start {n} ({new}) | " for n in names)
        + ("".join(f"all-users {n} ({new}) | " for n in names) if all_users else "") + "train seconds |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    for name in VARIANTS:
        lines.append(f"| {name} | " + "".join(f"{ms(c, name)} | " for c in cols) + f"{ms('seconds', name)} |")
    lines.append(f"| (base training, without {new}) | " + "| " * len(cols) + f"{ms('seconds', 'base training')} |")
    k = keys[0]
    gap = statistics.mean(r[k] for r in rows["full retraining"]) - statistics.mean(r[k] for r in rows["fine-tuned"])
    ratio = statistics.mean(r["seconds"] for r in rows["fine-tuned"]) / statistics.mean(
        r["seconds"] for r in rows["full retraining"])
    paired = [f - t for f, t in zip((r[k] for r in rows["full retraining"]), (r[k] for r in rows["fine-tuned"]),
                                    strict=True)]
    lines.append(f"\ncold-start {k.upper()} of full retraining minus fine-tuned: {gap:+.4f} (per seed: "
                 f"{', '.join(f'{d:+.4f}' for d in paired)}); time ratio fine-tuned / full retraining: {ratio:.3f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--users", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ft-epochs", type=int, default=3)
    ap.add_argument("--ft-lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-finetune"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    full_dir, base_dir = make_worlds(args.out, args.users)
    train_cfg = TrainConfig(epochs=args.epochs, patience=1, batch_size=1024, progress=False)
    full_prep = prepare(DataConfig(path=str(full_dir)))
    base_prep = prepare(DataConfig(path=str(base_dir)))
    alone_prep = restrict_split(full_prep, NEW)
    oracle = None
    rows: dict[str, list[dict]] = {k: [] for k in VARIANTS + ("base training",)}
    for seed in range(args.seeds):
        tc = train_cfg.model_copy(update={"seed": seed})
        full_res = compare_seed(rows, seed, new=NEW, keys=("auc",), full=(full_dir, full_prep),
                                base=(base_dir, base_prep), alone_prep=alone_prep, train_cfg=tc, out=args.out,
                                ft_epochs=args.ft_epochs, ft_lr=args.ft_lr)
        oracle = full_res.get("oracle", {}).get("cold", {}).get(NEW, {}).get("auc")

    lines = [
        f"world: demo preset, {args.users} users, 4 targets ({NEW} held out of the base); seeds 0..{args.seeds - 1}; "
        f"{args.epochs} epochs (patience 1) from scratch, {args.ft_epochs} fine-tuning epochs, lr {args.ft_lr}",
        f"oracle cold-start AUC on {NEW}: {oracle:.4f}" if oracle is not None else "",
        *summary_table(rows, NEW, ("auc",)),
    ]
    text = "\n".join(lines)
    (args.out / "finetune.md").write_text(text + "\n")
    (args.out / "finetune.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "oracle": oracle, "rows": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
