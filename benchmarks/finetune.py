"""Fine-tuning benchmark: add a fourth target domain to a DACDR trained on three, against three alternatives.

A synthetic world with four targets is generated; `target_4` (its domain row, item listings and rows) is
dropped for the base training. Per seed, on the same test day, cold-start users of `target_4`:

- **no fine-tuning**: the base model with `target_4`'s rows added (mean-initialised), nothing trained;
- **fine-tuned**: `dacdr.training.finetune` (new rows + attention projections, on `target_4`'s rows);
- **full retraining**: DACDR trained from scratch on all four targets;
- **new domain alone**: DACDR trained from scratch on `target_4`'s rows only.

    python benchmarks/finetune.py --seeds 3 --users 8000 --out runs/bench-finetune

Training times are `Trainer.fit` wall seconds (data preparation excluded, cached for every variant).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import polars as pl
import torch

from dacdr.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dacdr.data.dataset import load_dataset, write_dataset
from dacdr.data.synthetic import TargetConfig, generate, get_preset
from dacdr.models import create_model
from dacdr.runner import prepare_data
from dacdr.training.finetune import finetune, restrict_split
from dacdr.training.trainer import Trainer

NEW = "target_4"


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
        data = load_dataset(full)
        keep = pl.col("domain") != NEW
        spec = data.spec.model_copy(update={"target_domains": [d for d in data.spec.target_domains if d != NEW]})
        write_dataset(type(data)(spec=spec, interactions=data.interactions.filter(keep),
                                 items=data.items.filter(keep), domains=data.domains.filter(keep), path=None), base)
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
    full_prep = prepare_data(DataConfig(path=str(full_dir)))
    base_prep = prepare_data(DataConfig(path=str(base_dir)))
    alone_prep = restrict_split(full_prep, NEW)
    oracle = None
    rows: dict[str, list[dict]] = {k: [] for k in ("no fine-tuning", "fine-tuned", "full retraining",
                                                   "new domain alone", "base training")}
    for seed in range(args.seeds):
        tc = train_cfg.model_copy(update={"seed": seed})
        cfg_base = RunConfig(data=DataConfig(path=str(base_dir)), model=ModelConfig(), train=tc)
        cfg_full = RunConfig(data=DataConfig(path=str(full_dir)), model=ModelConfig(), train=tc)
        base_res, base_s = train(base_prep, cfg_base, args.out / f"base-seed{seed}")
        rows["base training"].append({"seconds": base_s})
        report = finetune(args.out / f"base-seed{seed}", full_dir, NEW, args.out / f"finetuned-seed{seed}",
                          epochs=args.ft_epochs, lr=args.ft_lr, seed=seed, progress=False, log=print)
        rows["no fine-tuning"].append({"auc": report["before"]["cold"]["auc"], "seconds": 0.0,
                                       "auc_all": report["before"]["all"]["auc"]})
        rows["fine-tuned"].append({"auc": report["after"]["cold"]["auc"], "seconds": report["train_seconds"],
                                   "auc_all": report["after"]["all"]["auc"],
                                   "trainable": report["trainable_parameters"], "total": report["total_parameters"]})
        full_res, full_s = train(full_prep, cfg_full, args.out / f"full-seed{seed}")
        rows["full retraining"].append({"auc": full_res["test"]["cold"][NEW]["auc"], "seconds": full_s,
                                        "auc_all": full_res["test"]["all"][NEW]["auc"]})
        oracle = full_res.get("oracle", {}).get("cold", {}).get(NEW, {}).get("auc")
        alone_res, alone_s = train(alone_prep, cfg_full, args.out / f"alone-seed{seed}")
        rows["new domain alone"].append({"auc": alone_res["test"]["cold"][NEW]["auc"], "seconds": alone_s,
                                         "auc_all": alone_res["test"]["all"][NEW]["auc"]})
        print(json.dumps({k: v[-1] for k, v in rows.items()}))

    def ms(key: str, name: str) -> str:
        vals = [r[key] for r in rows[name]]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.4f} ± {sd:.4f}" if key.startswith("auc") else f"{statistics.mean(vals):.1f} ± {sd:.1f}"

    ft = rows["fine-tuned"][0]
    lines = [
        f"world: demo preset, {args.users} users, 4 targets ({NEW} held out of the base); seeds 0..{args.seeds - 1}; "
        f"{args.epochs} epochs (patience 1) from scratch, {args.ft_epochs} fine-tuning epochs, lr {args.ft_lr}",
        f"oracle cold-start AUC on {NEW}: {oracle:.4f}" if oracle is not None else "",
        f"fine-tuned parameters: {ft['trainable']:,} of {ft['total']:,} ({100 * ft['trainable'] / ft['total']:.2f}%)",
        "",
        f"| model | cold-start AUC ({NEW}) | all-users AUC ({NEW}) | train seconds |",
        "|---|---|---|---|",
    ]
    for name in ("no fine-tuning", "fine-tuned", "full retraining", "new domain alone"):
        lines.append(f"| {name} | {ms('auc', name)} | {ms('auc_all', name)} | {ms('seconds', name)} |")
    lines.append(f"| (base training, 3 targets) | | | {ms('seconds', 'base training')} |")
    gap = statistics.mean(r["auc"] for r in rows["full retraining"]) - statistics.mean(
        r["auc"] for r in rows["fine-tuned"])
    ratio = statistics.mean(r["seconds"] for r in rows["fine-tuned"]) / statistics.mean(
        r["seconds"] for r in rows["full retraining"])
    lines.append(f"\nAUC gap to full retraining: {gap:+.4f}; time ratio fine-tuned / full retraining: {ratio:.3f}")
    text = "\n".join(lines)
    (args.out / "finetune.md").write_text(text + "\n")
    (args.out / "finetune.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "oracle": oracle, "rows": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
