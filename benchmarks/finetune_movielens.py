"""Fine-tuning benchmark on real data: MovieLens-1M genre groups, a fourth group added as a new domain.

MovieLens-1M (`../shared/data/movielens-1m`, RecBole atomic files) is converted with genre groups as domains,
an item going to the first group (in this order) that lists one of its genres:

- `Drama` (Drama), `Comedy` (Comedy: the source), `Action` (Action, Adventure): the base targets;
- `Thriller` (Thriller, Crime, Horror, Mystery, Film-Noir): the new domain, dropped (domain row, items,
  rows) from the base training's copy of the dataset.

Protocol: P2 leak-free, as `configs/experiments/movielens-1m.yaml` (20 % of each target's overlapping users
held out as cold-start test users, all their target ratings hidden; each source sequence holds only the
Comedy ratings made before the rating being predicted; split seed 0 for every variant and model seed, so
all compare on the same cold-start users). Per model seed, on `Thriller`'s cold-start users (MAE / RMSE):
no fine-tuning, fine-tuned (`dacdr.recipes.finetune`), full retraining on all four groups, and DACDR
trained on `Thriller`'s rows alone. The shared code is `benchmarks/finetune.py`'s.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/finetune_movielens.py --seeds 3 --epochs 3 \
        --max-steps 400 --ft-epochs 3 --out runs/bench-finetune-ml

`--references-only` prints two untrained references (the new domain's training mean rating, and item means)
without training anything. Training times are `Trainer.fit` wall seconds (data preparation excluded, cached for every variant).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune import VARIANTS, compare_seed, drop_domain, summary_table  # noqa: E402

from dacdr.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from dacdr.data.loaders import convert, convert_config  # noqa: E402
from dacdr.data.prepare import prepare  # noqa: E402
from dacdr.training.finetune import restrict_split  # noqa: E402

NEW = "Thriller"
# First match wins; Drama before Comedy as in configs/experiments/movielens-1m.yaml.
GROUPS = {
    "Drama": ["Drama"],
    "Comedy": ["Comedy"],
    "Action": ["Action", "Adventure"],
    NEW: ["Thriller", "Crime", "Horror", "Mystery", "Film-Noir"],
}
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-1m"


def make_datasets(root: Path, raw: Path) -> tuple[Path, Path]:
    full, base = root / "data-full", root / "data-base"
    if not (full / "dataset.json").exists():
        if not (raw / "ml-1m.inter").is_file():
            raise FileNotFoundError(f"{raw}: no ml-1m.inter (pass --data, the RecBole movielens-1m folder)")
        cfg = convert_config(format="recbole", name="movielens-1m-genres", source="Comedy",
                            targets=[d for d in GROUPS if d != "Comedy"], files={"all": str(raw / "ml-1m.inter")},
                            item_file=str(raw / "ml-1m.item"), genre_domains=GROUPS)
        convert(cfg, full, overwrite=True)
    if not (base / "dataset.json").exists():
        drop_domain(full, base, NEW)
    return full, base


def references(prepared, domain: str) -> dict[str, dict[str, float]]:
    """MAE / RMSE on `domain`'s test rows of two untrained predictors fitted on its training rows: their mean
    rating, and each item's mean rating (the mean for items with none; what `Pop` does for ratings)."""
    s, sp = prepared.samples, prepared.split
    dom = prepared.vocabs["domain"].lookup(domain)
    train = sp.train_target[s["domain"][sp.train_target] == dom]
    test = sp.test[s["domain"][sp.test] == dom]
    y, items = s["label"][train].astype(np.float64), s["item"][train]
    mean = float(y.mean())
    sums = np.bincount(items, weights=y, minlength=int(s["item"].max()) + 1)
    counts = np.bincount(items, minlength=len(sums))
    item_mean = np.where(counts > 0, sums / np.maximum(counts, 1), mean)
    truth = s["label"][test].astype(np.float64)
    out = {}
    for name, pred in (("train mean", np.full(len(test), mean)), ("item mean", item_mean[s["item"][test]])):
        err = pred - truth
        out[name] = {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the RecBole movielens-1m folder")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=400, help="cap on training steps per epoch (batch 1024)")
    ap.add_argument("--ft-epochs", type=int, default=3)
    ap.add_argument("--ft-lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-finetune-ml"))
    ap.add_argument("--references-only", action="store_true", help="print the untrained references; train nothing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()  # at the start: the code that runs
    load_before = os.getloadavg()
    full_dir, base_dir = make_datasets(args.out, args.data)
    data = {"protocol": "users", "cold_start_share": 0.2, "valid_share": 0.1, "max_len": 50, "sequence_cutoff": "before"}
    train_cfg = TrainConfig(epochs=args.epochs, patience=1, batch_size=1024, lr=2e-3, progress=False,
                            max_steps_per_epoch=args.max_steps, num_threads=args.threads)
    full_prep = prepare(DataConfig(path=str(full_dir), **data))
    base_prep = prepare(DataConfig(path=str(base_dir), **data))
    alone_prep = restrict_split(full_prep, NEW)
    refs = references(full_prep, NEW)
    ref_line = f"untrained references on {NEW}'s cold-start ratings (MAE / RMSE): " + "; ".join(
        f"{k} {v['mae']:.4f} / {v['rmse']:.4f}" for k, v in refs.items())
    if args.references_only:
        print(ref_line)
        return
    rows: dict[str, list[dict]] = {k: [] for k in VARIANTS + ("base training",)}
    loads = [load_before]
    for seed in range(args.seeds):
        tc = train_cfg.model_copy(update={"seed": seed})
        compare_seed(rows, seed, new=NEW, keys=("mae", "rmse"), full=(full_dir, full_prep),
                     base=(base_dir, base_prep), alone_prep=alone_prep, train_cfg=tc, out=args.out,
                     ft_epochs=args.ft_epochs, ft_lr=args.ft_lr, model=ModelConfig(), data=data)
        loads.append(os.getloadavg())
        (args.out / "finetune.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                            "rows": rows, "loadavg": loads}, indent=1))

    dom = full_prep.vocabs["domain"].lookup(NEW)
    s, sp = full_prep.samples, full_prep.split
    test_rows = sp.test[s["domain"][sp.test] == dom]
    groups = ", ".join(f"{d} ({' '.join(g)})" for d, g in GROUPS.items())
    lines = [
        f"MovieLens-1M genre groups {groups}; source Comedy, "
        f"{NEW} held out of the base; P2 leak-free, 20 % cold-start, split seed 0; {NEW} cold-start test: "
        f"{len(test_rows):,} ratings of {len(set(s['user'][test_rows].tolist())):,} users",
        f"model DACDR (registry defaults) at commit {commit}; model seeds 0..{args.seeds - 1}; {args.epochs} epochs "
        f"(patience 1, at most {args.max_steps} steps of 1024) from scratch, {args.ft_epochs} fine-tuning epochs, "
        f"lr {args.ft_lr}; {args.threads} torch thread(s)",
        f"wall {time.perf_counter() - t_start:.0f} s in all; load average (1, 5, 15 min) at start and after each "
        f"seed: {'; '.join(', '.join(f'{x:.1f}' for x in la) for la in loads)}",
        ref_line,
        *summary_table(rows, NEW, ("mae", "rmse"), all_users=False),
    ]
    text = "\n".join(lines)
    (args.out / "finetune.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
