"""How much of the gap to the transferable oracle a history of 50 source behaviours can close (a diagnostic).

The transferable oracle knows the person's interests, shared taste and click propensity exactly; the histogram
plug-in knows only the topic shares of her last 50 source behaviours. This script adds to the plug-in what those
same behaviours reveal about the other two, with the world's item vectors known (a model has to learn them):

- **taste**: a ridge regression, per impression, of her clicks on her last 50 source behaviours (1 clicked, 0
  browsed) on the items' latent vectors; the target taste shares the source taste's transferable part, so the
  estimate enters as its dot product with the candidate's latent vector;
- **propensity**: her click rate over the same behaviours, shrunk towards the world's (a beta prior).

The two enter the plug-in's logit with one weight each, fitted (logistic regression) on the warm users' test
rows of the same target and evaluated on its cold-start rows, with the ridge penalty chosen the same way.

    python benchmarks/taste_plugin.py DATASET_DIR      # a generated world, e.g. `dacdr generate demo`
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression

from dacdr.data.dataset import read_spec
from dacdr.data.synthetic.config import SyntheticConfig
from dacdr.data.synthetic.world import build_world
from dacdr.metrics import auc

WINDOW = 50
PENALTIES = (3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


def _features(rows: pl.DataFrame, key: np.ndarray, s_item: np.ndarray, s_click: np.ndarray, span: int,
              latent: np.ndarray, rate: float, penalty: float) -> np.ndarray:
    user, ts, item = (rows[c].to_numpy() for c in ("user", "timestamp", "item"))
    end = np.searchsorted(key, user.astype(np.int64) * span + ts, side="left")
    start = np.maximum(np.searchsorted(key, user.astype(np.int64) * span, side="left"), end - WINDOW)
    pos = end[:, None] - WINDOW + np.arange(WINDOW)[None, :]
    valid = (pos >= start[:, None]).astype(float)
    safe = np.where(valid > 0, pos, 0)
    x = latent[s_item[safe]] * valid[..., None]  # [n, W, d]
    y = s_click[safe] * valid
    n = valid.sum(1)
    clicks = y.sum(1)
    prior = 10.0  # pseudo-behaviours of the beta prior on the click rate
    p_user = (clicks + prior * rate) / (n + prior)
    propensity = np.log(p_user / (1 - p_user)) - np.log(rate / (1 - rate))
    centred = (y - p_user[:, None]) * valid
    a = np.einsum("nwi,nwj->nij", x, x) + penalty * np.eye(latent.shape[1])[None]
    b = np.einsum("nwi,nw->ni", x, centred)
    taste = np.linalg.solve(a, b[..., None])[..., 0]
    match = np.einsum("ni,ni->n", taste, latent[item])
    p = np.clip(rows["p_plugin"].to_numpy(), 1e-12, 1 - 1e-12)
    return np.stack([np.log(p / (1 - p)), propensity, match], axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    args = ap.parse_args()
    root = args.dataset
    spec = read_spec(root)
    cfg = SyntheticConfig.model_validate(spec.generator["config"])
    world = build_world(cfg, int(spec.generator["seed"]))
    df = pl.scan_parquet(root / "interactions" / "*.parquet").select(
        "user", "domain", "item", "timestamp", "label", "p_true", "p_transferable", "p_plugin").collect()
    src = df.filter(pl.col("domain") == spec.source_domain).sort("user", "timestamp", maintain_order=True)
    s_user, s_ts = src["user"].to_numpy(), src["timestamp"].to_numpy()
    s_item, s_click = src["item"].to_numpy(), src["label"].to_numpy()
    span = int(df["timestamp"].max()) + 1
    key = s_user.astype(np.int64) * span + s_ts
    rate = float(s_click.mean())
    src_before = np.unique(s_user[s_ts < spec.test_start])
    print("| cold-start AUC | " + " | ".join(["oracle", "transferable oracle", "plug-in", "plug-in + propensity",
                                               "plug-in + taste", "plug-in + both", "penalty"]) + " |")
    print("|---|" + "---|" * 7)
    for name in spec.target_domains:
        t = df.filter(pl.col("domain") == name)
        warm_users = t.filter(pl.col("timestamp") < spec.test_start)["user"].unique().to_numpy()
        test = t.filter((pl.col("timestamp") >= spec.test_start) & pl.col("user").is_in(src_before))
        warm = test.filter(pl.col("user").is_in(warm_users))
        cold = test.filter(~pl.col("user").is_in(warm_users))
        best = None
        for penalty in PENALTIES:  # chosen on the warm users' rows, never the cold-start ones
            fw = _features(warm, key, s_item, s_click, span, world.item_latent, rate, penalty)
            fit = LogisticRegression(C=1e6, max_iter=1000).fit(fw, warm["label"].to_numpy())
            score = auc(warm["label"].to_numpy(), fit.decision_function(fw))
            if best is None or score > best[0]:
                best = (score, penalty, fit)
        _, penalty, fit = best
        fc = _features(cold, key, s_item, s_click, span, world.item_latent, rate, penalty)
        y = cold["label"].to_numpy()
        cols = {"propensity": [0, 1], "taste": [0, 2], "both": [0, 1, 2]}
        scores = {}
        for label, idx in cols.items():
            fw = _features(warm, key, s_item, s_click, span, world.item_latent, rate, penalty)[:, idx]
            part = LogisticRegression(C=1e6, max_iter=1000).fit(fw, warm["label"].to_numpy())
            scores[label] = auc(y, part.decision_function(fc[:, idx]))
        row = [auc(y, cold["p_true"].to_numpy()), auc(y, cold["p_transferable"].to_numpy()),
               auc(y, cold["p_plugin"].to_numpy()), scores["propensity"], scores["taste"], scores["both"]]
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in row) + f" | {penalty:g} |")


if __name__ == "__main__":
    main()
