"""What a generated world looks like: per-domain statistics with the reference AUCs, and the focus categories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from dacdr.data.dataset import INTERACTIONS_DIR, INTERACTIONS_FILE, ITEMS_FILE, REFERENCE_COLUMNS, read_spec
from dacdr.data.synthetic.config import SyntheticConfig
from dacdr.data.synthetic.world import build_world
from dacdr.metrics import auc

__all__ = ["focus_categories", "summarize"]


def _interactions(root: Path) -> pl.LazyFrame:
    single = root / INTERACTIONS_FILE
    return pl.scan_parquet(single if single.exists() else root / INTERACTIONS_DIR / "*.parquet")


def summarize(path: str | Path) -> dict[str, dict[str, float]]:
    """Per-domain statistics of a generated dataset, with the oracle AUC (AUC of ``p_true``) of the test day.

    ``cold_*`` figures are over cold-start users of the target: users with source history before the test
    day and no impression in the target before it (protocol P1).
    """
    root = Path(path)
    spec = read_spec(root)
    source, test_start = spec.source_domain, spec.test_start
    df = _interactions(root)
    items = pl.read_parquet(root / ITEMS_FILE)
    src_users = (
        df.filter((pl.col("domain") == source) & (pl.col("timestamp") < test_start))
        .select("user")
        .unique()
        .collect()["user"]
    )
    all_src = df.filter(pl.col("domain") == source).select("user").unique().collect()["user"]
    out: dict[str, dict[str, float]] = {}
    src = (
        df.filter(pl.col("domain") == source)
        .select(pl.len().alias("rows"), pl.col("user").n_unique().alias("users"), pl.col("label").mean().alias("ctr"))
        .collect()
    )
    out[source] = {
        "rows": float(src["rows"][0]),
        "users": float(src["users"][0]),
        "items": float(items.filter(pl.col("domain") == source).height),
        "ctr": float(src["ctr"][0]),
    }
    refs = [c for c in REFERENCE_COLUMNS if c in df.collect_schema().names()]
    for name in spec.target_domains:
        t = df.filter(pl.col("domain") == name).select("user", "label", "timestamp", *refs).collect()
        users = t["user"].unique()
        warm = t.filter(pl.col("timestamp") < test_start)["user"].unique()
        test = t.filter(pl.col("timestamp") >= test_start)
        test_users = test["user"].unique()
        cold_users = test_users.filter(test_users.is_in(src_users.implode()) & ~test_users.is_in(warm.implode()))
        cold = test.filter(pl.col("user").is_in(cold_users.implode()))
        out[name] = {
            "rows": float(t.height),
            "train_rows": float(t.height - test.height),
            "test_rows": float(test.height),
            "users": float(users.len()),
            "items": float(items.filter(pl.col("domain") == name).height),
            "ctr": float(t["label"].mean()),
            "overlap": float(users.is_in(all_src.implode()).mean()),
            "cold_users": float(cold_users.len()),
            "cold_test_rows": float(cold.height),
            "cold_test_ctr": float(cold["label"].mean()) if cold.height else float("nan"),
            "oracle_auc_cold": auc(cold["label"], cold["p_true"]),
            "oracle_auc_test": auc(test["label"], test["p_true"]),
        }
        for col, key in (("p_transferable", "oracle_transferable"), ("p_plugin", "plugin")):
            if col in refs:
                out[name][f"{key}_auc_cold"] = auc(cold["label"], cold[col])
    return out


def focus_categories(path: str | Path) -> dict[str, list[str]]:
    """Per target domain of a generated world, the categories of its focus topics: the behaviours the
    mechanism's domain-level part reads (``MechanismConfig``). Rebuilt from ``dataset.json``'s config and
    seed, for analysis only (never a model input)."""
    meta = read_spec(path).generator or {}
    if "config" not in meta or "seed" not in meta:
        raise ValueError(f"{path}: dataset.json has no generator config and seed; not a synthetic world")
    world = build_world(SyntheticConfig.model_validate(meta["config"]), int(meta["seed"]))
    return {name: [f"cat_{t:02d}" for t in np.flatnonzero(world.focus_set[d])]
            for d, name in enumerate(world.domains) if d > 0}
