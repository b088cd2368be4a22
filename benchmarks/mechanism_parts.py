"""What the mechanism world's selective signal is worth, and how much of it needs selection (a diagnostic).

The mechanism's logit term is a function of the 50 source behaviours a model sees (docs/synthetic.md), so the
histogram plug-in plus the exact term is a figure a model reading the history could reach. This script recomputes
the term's two parts from a generated dataset (its source history and the world's item styles, rebuilt from the
config and seed in `dataset.json`) and scores the cold-start test rows of every target with the plug-in's logit
plus variants of the term:

- exact: D (the recency-weighted mean style of the focus-topic behaviours) and I (twice the recency-weighted mean
  similarity of the same-category behaviours to the candidate), as the world draws the labels;
- D only, I only;
- no recency: both parts with every behaviour of the window weighted alike;
- unselected: the focus-masked style (for D) or the same-category-masked similarity (for I) averaged over *every*
  behaviour, i.e. without dividing by the size of the relevant subset: what a pooled mean of the history can give
  (with `item_part="best"`, I unselected is the best match over every behaviour, whatever its category).

    python benchmarks/mechanism_parts.py DATASET_DIR        # e.g. a world generated with `dacdr generate mechanism`
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from dacdr.data.dataset import read_spec
from dacdr.data.synthetic.config import SyntheticConfig
from dacdr.data.synthetic.world import build_world
from dacdr.metrics import auc


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    total = weights.sum(axis=1)
    return np.where(total > 0, (weights * values).sum(axis=1) / np.maximum(total, 1e-300), 0.0)


def parts(root: Path) -> list[dict[str, float]]:
    spec = read_spec(root)
    cfg = SyntheticConfig.model_validate(spec.generator["config"])
    mech = cfg.mechanism
    if mech.strength == 0:
        raise SystemExit(f"{root}: the world has no mechanism (strength 0)")
    world = build_world(cfg, int(spec.generator["seed"]))
    df = pl.scan_parquet(root / "interactions" / "*.parquet").select(
        "user", "domain", "item", "timestamp", "label", "p_true", "p_transferable", "p_plugin").collect()
    src = df.filter(pl.col("domain") == spec.source_domain).sort("user", "timestamp", maintain_order=True)
    s_user, s_ts, s_item = (src[c].to_numpy() for c in ("user", "timestamp", "item"))
    span = int(df["timestamp"].max()) + 1
    key = s_user.astype(np.int64) * span + s_ts
    src_before = np.unique(s_user[s_ts < spec.test_start])
    out = []
    for d, name in enumerate(spec.target_domains, start=1):
        t = df.filter(pl.col("domain") == name)
        warm = t.filter(pl.col("timestamp") < spec.test_start)["user"].unique().to_numpy()
        test = t.filter(pl.col("timestamp") >= spec.test_start)
        test = test.filter(pl.col("user").is_in(src_before) & ~pl.col("user").is_in(warm))
        user, ts, item = (test[c].to_numpy() for c in ("user", "timestamp", "item"))
        end = np.searchsorted(key, user.astype(np.int64) * span + ts, side="left")
        start = np.maximum(np.searchsorted(key, user.astype(np.int64) * span, side="left"), end - mech.window)
        pos = end[:, None] - mech.window + np.arange(mech.window)[None, :]
        valid = pos >= start[:, None]
        ev = s_item[np.where(valid, pos, 0)]
        topic = world.item_topic[ev]
        rank = mech.window - 1 - np.arange(mech.window)
        rec = (0.5 ** (rank / mech.recency_half_life) if mech.recency_half_life else np.ones(mech.window)) * valid
        flat = valid.astype(float)
        style = world.item_style[d][ev]
        focus = world.focus_set[d][topic]
        same = topic == world.item_topic[item][:, None]
        sim = np.einsum("nwj,nj->nw", world.item_residual[ev], world.item_residual[item])
        s, dw, iw = mech.strength, mech.domain_weight, mech.item_weight
        d_exact = _weighted_mean(style, rec * focus)
        def item_term(weights: np.ndarray, keep: np.ndarray, sim: np.ndarray = sim) -> np.ndarray:
            if mech.item_part == "best":  # the best match: the largest recency-weighted similarity
                best = np.where(keep & (weights > 0), weights * sim, -np.inf).max(axis=1)
                return 2 * np.where(np.isfinite(best), best, 0.0)
            return 2 * _weighted_mean(sim, weights * keep)

        i_exact = item_term(rec, same)
        # mean: the same-category similarities averaged over every behaviour (a pooled mean cannot divide by
        # the subset's size); best: the best match over every behaviour, whatever its category
        i_unselected = (item_term(rec, valid) if mech.item_part == "best"
                        else 2 * _weighted_mean(sim * same, rec))
        p = np.clip(test["p_plugin"].to_numpy(), 1e-12, 1 - 1e-12)
        base = np.log(p / (1 - p))
        y = test["label"].to_numpy()
        scores = {
            "oracle": test["p_true"].to_numpy(),
            "transferable oracle": test["p_transferable"].to_numpy(),
            "plug-in": p,
            "plug-in + exact term": base + s * (dw * d_exact + iw * i_exact),
            "+ D only": base + s * dw * d_exact,
            "+ I only": base + s * iw * i_exact,
            "+ term without recency": base + s * (dw * _weighted_mean(style, flat * focus)
                                                  + iw * item_term(flat, same)),
            "+ term, D unselected": base + s * (dw * _weighted_mean(style * focus, rec) + iw * i_exact),
            "+ term, I unselected": base + s * (dw * d_exact + iw * i_unselected),
            "+ term, both unselected": base + s * (dw * _weighted_mean(style * focus, rec) + iw * i_unselected),
        }
        row = {"target": name, "rows": float(len(y))} | {k: auc(y, v) for k, v in scores.items()}
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    args = ap.parse_args()
    rows = parts(args.dataset)
    keys = [k for k in rows[0] if k not in ("target", "rows")]
    print("| cold-start AUC | " + " | ".join(r["target"] for r in rows) + " | mean |")
    print("|---|" + "---|" * (len(rows) + 1))
    for k in keys:
        vals = [r[k] for r in rows]
        print(f"| {k} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {np.mean(vals):.4f} |")
    print(f"\n(cold-start test rows: {', '.join(str(int(r['rows'])) for r in rows)})")


if __name__ == "__main__":
    main()
