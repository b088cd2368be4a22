"""How much of the histogram plug-in's AUC is the world's true item quality (a diagnostic, no training).

The plug-in (`p_plugin`, written by the generator) is the world's interest term fed with the topic shares of the
person's last 50 source behaviours, plus the item's true quality. A model has to learn that quality from the
training clicks. This script splits the plug-in into its two terms and replaces the true quality by one
estimated from the training rows:

- **histogram term**: the plug-in's logit without the quality term;
- **plug-in**: as the world writes it (true quality);
- **estimated quality**: a logistic regression of the target training clicks (timestamp before the test start)
  on the histogram term (one weight per target), a per-target intercept and one effect per item shared by the
  targets, with an L2 penalty chosen on the warm users' test rows (never the cold-start ones); with
  ``--with-source`` the source's training clicks inform the item effects too (their own intercept, no
  histogram term: the models also learn their item tables from the source).

And what the domain-level normalisation of the world's interest term is worth (``--normalisation``): its term is
``log(k share(c) focus_d(c) / Z + smooth)`` with ``Z = sum_t share(t) focus_d(t)`` over the topic shares of the last
50 behaviours. A pooled model with count features knows share(c) and can learn focus_d(c) per candidate; Z
needs the domain's weights over the history's topics (step 1's allocation). Per target, a logistic regression
on the training rows of [log share(c), topic one-hot] against the same plus log Z bounds what step 1 can add.

Cold-start rows: test rows of users with source behaviour before the test start and no target row before it in
that target (as `benchmarks/taste_plugin.py`; summarize's cold-start set differs slightly from the split's).

    python benchmarks/plugin_quality.py DATASET_DIR      # a generated world, e.g. `dacdr generate demo`
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from dacdr.data.dataset import read_spec
from dacdr.data.synthetic.config import SyntheticConfig
from dacdr.data.synthetic.world import build_world
from dacdr.metrics import auc

PENALTIES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # sklearn's C (inverse penalty) for the item effects


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def design(rows: pl.DataFrame, t: int, n_items: int, histogram: np.ndarray) -> sp.csr_matrix:
    """[n, 2 t + items]: the histogram term and an intercept per block (target, or the source), then one column
    per item."""
    n = rows.height
    d = rows["domain_index"].to_numpy()
    per_target = np.zeros((n, 2 * t))
    per_target[np.arange(n), d] = histogram
    per_target[np.arange(n), t + d] = 1.0
    items = sp.csr_matrix((np.ones(n), (np.arange(n), rows["item"].to_numpy())), shape=(n, n_items))
    return sp.hstack([sp.csr_matrix(per_target), items], format="csr")


COLUMNS = ["oracle", "transferable oracle", "histogram term", "plug-in (true quality)", "plug-in (estimated quality)"]


def quality_table(dataset: Path, with_source: bool = False, log=print) -> dict:
    """Per target, the cold-start AUC of each of `COLUMNS`; the chosen penalty and the estimates' correlation with
    the true quality; and the frames `normalisation_table` reads."""
    spec = read_spec(dataset)
    cfg = SyntheticConfig.model_validate(spec.generator["config"])
    world = build_world(cfg, int(spec.generator["seed"]))
    df = pl.scan_parquet(dataset / "interactions" / "*.parquet").select(
        "user", "domain", "item", "timestamp", "label", "p_true", "p_transferable", "p_plugin").collect()
    targets = list(spec.target_domains)
    src = df.filter(pl.col("domain") == spec.source_domain)
    src_before = src.filter(pl.col("timestamp") < spec.test_start)["user"].unique().implode()
    t = df.filter(pl.col("domain").is_in(targets)).with_columns(
        pl.col("domain").replace_strict({name: i for i, name in enumerate(targets)}).alias("domain_index"))
    quality = cfg.quality_weight * world.item_quality[t["item"].to_numpy()]
    t = t.with_columns(pl.Series("histogram", _logit(t["p_plugin"].to_numpy()) - quality))
    train = t.filter(pl.col("timestamp") < spec.test_start)
    fit_rows = train
    if with_source:  # "domain_index" T: the source's own intercept column; its histogram column stays 0
        fit_rows = pl.concat([train, src.filter(pl.col("timestamp") < spec.test_start).with_columns(
            pl.lit(len(targets)).alias("domain_index"), pl.lit(0.0).alias("histogram"))], how="diagonal_relaxed")
    test = t.filter((pl.col("timestamp") >= spec.test_start) & pl.col("user").is_in(src_before))
    warm_keys = train.select("user", "domain").unique().with_columns(pl.lit(True).alias("warm"))
    test = test.join(warm_keys, on=["user", "domain"], how="left").with_columns(pl.col("warm").fill_null(False))
    warm, cold = test.filter(pl.col("warm")), test.filter(~pl.col("warm"))
    n_items = int(df["item"].max()) + 1

    n_blocks = len(targets) + int(with_source)
    x_train = design(fit_rows, n_blocks, n_items, fit_rows["histogram"].to_numpy())
    best = None
    for c in PENALTIES:
        fit = LogisticRegression(C=c, max_iter=2000).fit(x_train, fit_rows["label"].to_numpy())
        score = np.mean([auc(g["label"].to_numpy(), fit.decision_function(
            design(g, n_blocks, n_items, g["histogram"].to_numpy()))) for _, g in warm.group_by("domain")])
        log(f"C = {c:g}: warm users' test AUC (mean of targets) {score:.4f}")
        if best is None or score > best[0]:
            best = (score, c, fit)
    _, c, fit = best
    true_q, est_q = world.item_quality, fit.coef_[0, 2 * n_blocks:]
    seen = np.unique(fit_rows["item"].to_numpy())
    rows = {}
    for name in targets:
        g = cold.filter(pl.col("domain") == name)
        y = g["label"].to_numpy()
        est = fit.decision_function(design(g, n_blocks, n_items, g["histogram"].to_numpy()))
        rows[name] = [auc(y, g["p_true"].to_numpy()), auc(y, g["p_transferable"].to_numpy()),
                      auc(y, g["histogram"].to_numpy()), auc(y, g["p_plugin"].to_numpy()), auc(y, est)]
    return {"rows": rows, "penalty": c, "correlation": float(np.corrcoef(true_q[seen], est_q[seen])[0, 1]),
            "frames": (world, cfg, src, train, cold, targets)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--with-source", action="store_true", help="estimate the item effects from source rows too")
    ap.add_argument("--normalisation", action="store_true", help="also: the value of the domain's normaliser Z")
    args = ap.parse_args()
    out = quality_table(args.dataset, args.with_source)
    print(f"\nchosen C = {out['penalty']:g}; correlation of the estimated item effects with the true quality "
          f"(items seen in training): {out['correlation']:.3f}\n")
    print("| cold-start AUC | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, row in out["rows"].items():
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    print("| mean | " + " | ".join(f"{v:.4f}" for v in np.mean(list(out["rows"].values()), axis=0)) + " |")
    if args.normalisation:
        print("\n| cold-start AUC | share(c) and topic (pooling's counts) | + log Z (step 1's normaliser) | "
              "difference |\n|---|---|---|---|")
        rows = normalisation_table(*out["frames"])
        for name, (without, with_z) in rows.items():
            print(f"| {name} | {without:.4f} | {with_z:.4f} | {with_z - without:+.4f} |")
        print(f"| mean | | | {np.mean([b - a for a, b in rows.values()]):+.4f} |")


WINDOW = 50


def topic_shares(rows: pl.DataFrame, src: pl.DataFrame, item_topic: np.ndarray, k: int, a: float) -> np.ndarray:
    """[n, k]: the smoothed topic shares of each row's last 50 source behaviours before it (the plug-in's)."""
    src = src.sort("user", "timestamp")
    s_user, s_ts, s_item = (src[c].to_numpy() for c in ("user", "timestamp", "item"))
    span = int(max(s_ts.max(), rows["timestamp"].max())) + 1
    key = s_user.astype(np.int64) * span + s_ts
    user, ts = rows["user"].to_numpy().astype(np.int64), rows["timestamp"].to_numpy()
    end = np.searchsorted(key, user * span + ts, side="left")
    start = np.maximum(np.searchsorted(key, user * span, side="left"), end - WINDOW)
    pos = end[:, None] - WINDOW + np.arange(WINDOW)[None, :]
    valid = pos >= start[:, None]
    topic = item_topic[s_item[np.where(valid, pos, 0)]]
    counts = np.zeros((rows.height, k))
    np.add.at(counts, (np.broadcast_to(np.arange(rows.height)[:, None], pos.shape)[valid], topic[valid]), 1.0)
    return (counts + a) / (counts.sum(1, keepdims=True) + k * a)


def normalisation_table(world, cfg, src, train, cold, targets) -> dict[str, tuple[float, float]]:  # noqa: ANN001
    """Per target: cold-start AUC of [log share(c), topic] without and with log Z (fitted on the training rows)."""
    k = cfg.n_topics

    def features(rows: pl.DataFrame, d: int, with_z: bool) -> np.ndarray:
        share = topic_shares(rows, src, world.item_topic, k, cfg.interest_concentration)
        topic = world.item_topic[rows["item"].to_numpy()]
        cols = [np.log(share[np.arange(rows.height), topic])[:, None], np.eye(k)[topic]]
        if with_z:
            cols.append(np.log(share @ world.focus[d])[:, None])
        return np.hstack(cols)

    out = {}
    for name in targets:
        d = world.domains.index(name)
        tr, te = train.filter(pl.col("domain") == name), cold.filter(pl.col("domain") == name)
        y = te["label"].to_numpy()
        row = []
        for with_z in (False, True):
            fit = LogisticRegression(C=1e6, max_iter=2000).fit(features(tr, d, with_z), tr["label"].to_numpy())
            row.append(auc(y, fit.decision_function(features(te, d, with_z))))
        out[name] = (row[0], row[1])
    return out


if __name__ == "__main__":
    main()
