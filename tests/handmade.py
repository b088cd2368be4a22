"""A small random cross-domain dataset built in a few lines, independent of the synthetic generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from dacdr.data.dataset import CrossDomainData, DatasetSpec, write_dataset

DAY = 86_400


def handmade_dataset(path: Path, n_users: int = 120, seed: int = 0, n_days: int = 6) -> Path:
    """Source funnel events and target impressions over `n_days`; the last day is the test day.

    Users 0..9 appear in target_a only on the test day (cold-start there); users >= n_users - 5 have no
    source history at all.
    """
    rng = np.random.default_rng(seed)
    test_start = (n_days - 1) * DAY
    items = pl.DataFrame({
        "item": np.arange(60, dtype=np.int64),
        "domain": ["source"] * 30 + ["target_a"] * 15 + ["target_b"] * 15,
        "category": [f"c{i % 5}" for i in range(60)],
        "brand": [f"b{i % 7}" for i in range(60)],
    })
    domains = pl.DataFrame({
        "domain": ["source", "target_a", "target_b"],
        "role": ["source", "target", "target"],
        "page_type": ["feed", "banner", "feed"],
        "business_line": ["retail", "retail", "ads"],
    })
    rows = []
    for u in range(n_users):
        if u < n_users - 5:
            n = int(rng.integers(0, 40))
            ts = np.sort(rng.integers(0, n_days * DAY, n))
            beh = rng.choice(["browse", "click", "cart", "purchase"], n, p=[0.6, 0.25, 0.1, 0.05])
            for t, b in zip(ts, beh, strict=True):
                rows.append((u, "source", int(rng.integers(0, 30)), b, float(b != "browse"), int(t), None))
        for dom, lo in (("target_a", 30), ("target_b", 45)):
            n = int(rng.integers(2, 15))
            start = test_start if (u < 10 and dom == "target_a") else 0
            ts = rng.integers(start, n_days * DAY, n)
            for t in ts:
                item = int(rng.integers(lo, lo + 15))
                p = float(1 / (1 + np.exp(-(-1.0 + 0.3 * ((u + item) % 5)))))
                rows.append((u, dom, item, "impression", float(rng.random() < p), int(t), p))
    inter = pl.DataFrame(
        rows, orient="row",
        schema={"user": pl.Int64, "domain": pl.String, "item": pl.Int64, "behaviour": pl.String,
                "label": pl.Float64, "timestamp": pl.Int64, "p_true": pl.Float64},
    )
    spec = DatasetSpec(
        schema_version=1, name="handmade", task="ctr", label_range=(0.0, 1.0), source_domain="source",
        target_domains=["target_a", "target_b"], item_features=["category", "brand"],
        domain_features=["page_type", "business_line"],
        behaviour_types=["browse", "click", "cart", "purchase", "impression"], test_start=test_start,
    )
    write_dataset(CrossDomainData(spec=spec, interactions=inter, items=items, domains=domains, path=None), path)
    return path
