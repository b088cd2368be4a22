"""Amazon review dumps: 2014 5-core reviews, 2014 ratings-only CSV, 2018 reviews, 2023 jsonl, metadata.

| format | file | user | item | rating | time |
|---|---|---|---|---|---|
| ``amazon-2014`` | ``reviews_<Category>_5.json.gz`` | reviewerID | asin | overall | unixReviewTime (s) |
| ``amazon-2014-csv`` | ``ratings_<Category>.csv`` (no header) | col 1 | col 2 | col 3 | col 4 (s) |
| ``amazon-2018`` | ``<Category>_5.json.gz`` / ``<Category>.json.gz`` | reviewerID | asin | overall | unixReviewTime (s) |
| ``amazon-2023`` | ``<Category>.jsonl(.gz)`` | user_id | parent_asin | rating | timestamp (ms) |

Reviews are parsed by Polars in blocks (see :mod:`dacdr.data.loaders.lines`), keeping only the four fields,
so a multi-GB dump never has to fit in memory as Python objects. Metadata (``meta_<Category>.json(l).gz``)
is read line by line: the 2014 files are Python literals (single quotes), not JSON.
"""

from __future__ import annotations

import ast
import io
import json
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import Field

from dacdr.data.dataset import CrossDomainData
from dacdr.data.loaders.base import Log, RatingOptions, reading, register_loader
from dacdr.data.loaders.common import reject_out_of_range
from dacdr.data.loaders.lines import DEFAULT_BLOCK_BYTES, Rejects, iter_blocks, parse_lines

# format -> (user field, item field, rating field, time field, seconds per time unit divisor)
JSON_FIELDS: dict[str, tuple[str, str, str, str, int]] = {
    "amazon-2014": ("reviewerID", "asin", "overall", "unixReviewTime", 1),
    "amazon-2018": ("reviewerID", "asin", "overall", "unixReviewTime", 1),
    "amazon-2023": ("user_id", "parent_asin", "rating", "timestamp", 1000),
}


def read_reviews(
    path: str | Path, fmt: str, rejects: Rejects, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> tuple[pl.DataFrame, int]:
    """Ratings of one Amazon review file: (user, item, label, timestamp, line), and the lines read."""
    if fmt == "amazon-2014-csv":
        return _read_ratings_csv(path, rejects, block_bytes)
    if fmt not in JSON_FIELDS:
        raise ValueError(f"unknown Amazon format {fmt!r}; expected one of {[*JSON_FIELDS, 'amazon-2014-csv']}")
    user, item, rating, ts, divisor = JSON_FIELDS[fmt]
    schema = {user: pl.String, item: pl.String, rating: pl.Float64, ts: pl.Int64}

    def parse(block: bytes) -> pl.DataFrame:
        return pl.read_ndjson(io.BytesIO(block), schema=schema)

    def post(df: pl.DataFrame) -> pl.DataFrame:
        return df.select(
            pl.col(user).alias("user"),
            pl.col(item).alias("item"),
            pl.col(rating).alias("label"),
            (pl.col(ts) // divisor if divisor != 1 else pl.col(ts)).alias("timestamp"),
        )

    df, n = parse_lines(path, parse, rejects, required=["user", "item", "label", "timestamp"],
                        block_bytes=block_bytes, post=post)
    return _empty_if_needed(df), n


def _read_ratings_csv(path: str | Path, rejects: Rejects, block_bytes: int) -> tuple[pl.DataFrame, int]:
    names = ["user", "item", "label", "timestamp"]

    def parse(block: bytes) -> pl.DataFrame:
        return pl.read_csv(io.BytesIO(block), has_header=False, schema=dict.fromkeys(names, pl.String),
                           quote_char=None)

    def post(df: pl.DataFrame) -> pl.DataFrame:
        return df.with_columns(
            pl.col("label").str.strip_chars().cast(pl.Float64, strict=False),
            pl.col("timestamp").str.strip_chars().cast(pl.Float64, strict=False).cast(pl.Int64, strict=False),
        )

    df, n = parse_lines(path, parse, rejects, required=names, block_bytes=block_bytes, post=post)
    return _empty_if_needed(df), n


def _empty_if_needed(df: pl.DataFrame) -> pl.DataFrame:
    if df.width:
        return df
    return pl.DataFrame(schema={"user": pl.String, "item": pl.String, "label": pl.Float64,
                                "timestamp": pl.Int64, "line": pl.Int64})


def _parse_meta_line(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = ast.literal_eval(text)  # 2014 metadata: Python dict literals
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object, got {type(obj).__name__}")
    return obj


def _category(obj: dict[str, Any]) -> str | None:
    """The first level below the root of the item's category path (the root is the domain itself)."""
    cats = obj.get("categories")
    if isinstance(cats, list) and cats and isinstance(cats[0], list):  # 2014: list of paths
        path = cats[0]
    elif isinstance(obj.get("category"), list):  # 2018: one path
        path = obj["category"]
    elif isinstance(cats, list):  # 2023: one path, root excluded
        path = [obj.get("main_category"), *cats]
    else:
        path = [obj.get("main_category")]
    path = [p for p in path if isinstance(p, str) and p]
    if not path:
        return None
    return path[1] if len(path) > 1 else path[0]


def read_metadata(
    path: str | Path, rejects: Rejects, items: set[str] | None = None, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> pl.DataFrame:
    """Item side features from an Amazon metadata file: item, category, brand (``store`` in 2023).

    ``items``: keep only these ids (the items that have ratings), which bounds memory.
    """
    file = Path(path).name
    ids: list[str] = []
    categories: list[str | None] = []
    brands: list[str | None] = []
    for block, first in iter_blocks(path, block_bytes):
        for offset, raw in enumerate(block.split(b"\n")[:-1]):
            if not raw.strip():
                continue
            line = first + offset
            try:
                obj = _parse_meta_line(raw.decode("utf-8"))
            except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError) as e:
                rejects.add(file, line, f"malformed: {type(e).__name__}", raw)
                continue
            item = obj.get("parent_asin") or obj.get("asin")
            if not isinstance(item, str) or not item:
                rejects.add(file, line, "missing or invalid field(s) asin", raw)
                continue
            if items is not None and item not in items:
                continue
            brand = obj.get("brand", obj.get("store"))
            ids.append(item)
            categories.append(_category(obj))
            brands.append(brand if isinstance(brand, str) and brand.strip() else None)
    return pl.DataFrame({"item": ids, "category": categories, "brand": brands},
                        schema={"item": pl.String, "category": pl.String, "brand": pl.String})


@register_loader
class AmazonOptions(RatingOptions):
    """Amazon review dumps, one file per domain, with optional metadata files for item category and brand."""

    format: Literal["amazon-2014", "amazon-2014-csv", "amazon-2018", "amazon-2023"]
    metadata: dict[str, str] = Field(
        default_factory=dict, description="domain -> metadata file (item category and brand)"
    )

    path_fields: ClassVar[tuple[str, ...]] = ("metadata",)

    def load(self, rejects: Rejects, log: Log = print, stats: dict | None = None) -> CrossDomainData:
        block = self.block_mb << 20
        tables: dict[str, pl.DataFrame] = {}
        for domain, path in self.files.items():
            t0 = time.perf_counter()
            with reading(path):
                df, n = read_reviews(path, self.format, rejects, block)
            log(f"{domain}: {n:,} lines read from {Path(path).name}, {df.height:,} ratings "
                f"({time.perf_counter() - t0:.1f} s)")
            tables[domain] = reject_out_of_range(df, self.label_range, Path(path).name, rejects)
        item_features = None
        if self.metadata:
            wanted = set(pl.concat([t["item"] for t in tables.values()]).unique().to_list())
            metas = []
            for p in self.metadata.values():
                with reading(p):
                    metas.append(read_metadata(p, rejects, wanted, block))
            item_features = pl.concat(metas).unique(subset="item", keep="first")
        return self.rating_dataset(tables, rejects, log, stats, item_features=item_features)
