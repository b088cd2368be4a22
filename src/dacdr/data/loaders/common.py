"""From per-domain rating tables to a validated dacdr dataset (docs/data-format.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import polars as pl

from dacdr.data.dataset import SCHEMA_VERSION, CrossDomainData, DatasetSpec
from dacdr.data.loaders.lines import Rejects

Duplicates = Literal["last", "first", "mean"]
RATING_COLUMNS = ("user", "item", "label", "timestamp", "line")


def dedup(df: pl.DataFrame, policy: Duplicates) -> tuple[pl.DataFrame, int]:
    """One row per (user, item) of a domain: the last (file order), the first, or the mean rating
    (with the last timestamp). Returns the table and how many rows were merged away."""
    df = df.sort("line")
    if policy == "mean":
        out = df.group_by("user", "item", maintain_order=True).agg(
            pl.col("label").mean(), pl.col("timestamp").last(), pl.col("line").last()
        )
    else:
        out = df.unique(subset=["user", "item"], keep=policy, maintain_order=True)
    return out.sort("line"), df.height - out.height


def reject_out_of_range(
    df: pl.DataFrame, label_range: tuple[float, float], file: str, rejects: Rejects
) -> pl.DataFrame:
    lo, hi = label_range
    bad = df.filter((pl.col("label") < lo) | (pl.col("label") > hi) | pl.col("label").is_nan())
    for row in bad.iter_rows(named=True):
        rejects.add(file, row["line"], f"rating outside [{lo:g}, {hi:g}]",
                    f"user={row['user']} item={row['item']} rating={row['label']}")
    return df.filter(~pl.col("line").is_in(bad["line"].implode())) if bad.height else df


def build_rating_dataset(
    name: str,
    source: str,
    targets: list[str],
    tables: dict[str, pl.DataFrame],
    *,
    has_timestamps: bool,
    label_range: tuple[float, float] = (1.0, 5.0),
    duplicates: Duplicates = "last",
    item_features: pl.DataFrame | None = None,
    generator: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    merged_counts: dict[str, int] | None = None,
) -> CrossDomainData:
    """``tables[domain]`` holds user, item, label, timestamp (may be null without timestamps), line.

    Without timestamps, each domain's file order is its clock and every source row is placed before every
    target row, so a sample's source sequence is the user's whole source history in file order (what the
    PTUPCDR code uses); the spec then records ``has_timestamps: false``.
    ``item_features``: item, feature columns (e.g. category, brand), joined onto every domain's items.
    ``merged_counts``, when given, receives each domain's number of repeated (user, item) rows merged away.
    """
    missing = [d for d in (source, *targets) if d not in tables]
    if missing:
        raise ValueError(f"no rating table for domain(s) {missing}")
    frames: list[pl.DataFrame] = []
    offset = 0
    for domain in (source, *targets):
        df, merged = dedup(tables[domain].select(RATING_COLUMNS), duplicates)
        if merged_counts is not None:
            merged_counts[domain] = merged
        if merged:
            log(f"{domain}: {merged:,} repeated (user, item) rows merged, keeping the {duplicates}")
        if not has_timestamps:
            df = df.with_columns(pl.int_range(offset, offset + df.height, dtype=pl.Int64).alias("timestamp"))
            offset += df.height
        frames.append(df.with_columns(pl.lit(domain).alias("domain")))
    inter = pl.concat(frames, how="vertical").select(
        pl.col("user").cast(pl.String),
        "domain",
        pl.col("item").cast(pl.String),
        pl.lit("rating").alias("behaviour"),
        pl.col("label").cast(pl.Float64),
        pl.col("timestamp").cast(pl.Int64),
    )
    items = inter.select("item", "domain").unique(maintain_order=True)
    feature_names: list[str] = []
    if item_features is not None:
        feature_names = [c for c in item_features.columns if c != "item"]
        feats = item_features.unique(subset="item", keep="first").with_columns(
            [pl.col(c).cast(pl.String) for c in feature_names]
        )
        items = items.join(feats, on="item", how="left", maintain_order="left")
        covered = items.filter(pl.col(feature_names[0]).is_not_null()).height if feature_names else 0
        log(f"item features {feature_names}: found for {covered:,} of {items.height:,} items")
    domains = pl.DataFrame({"domain": [source, *targets], "role": ["source"] + ["target"] * len(targets)})
    spec = DatasetSpec(
        schema_version=SCHEMA_VERSION,
        name=name,
        task="rating",
        label_range=label_range,
        source_domain=source,
        target_domains=list(targets),
        item_features=feature_names,
        domain_features=[],
        behaviour_types=["rating"],
        has_timestamps=has_timestamps,
        generator=generator,
    )
    return CrossDomainData(spec=spec, interactions=inter, items=items, domains=domains)
