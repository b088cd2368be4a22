"""Delimited text (CSV, TSV, RecBole atomic files) and Parquet tables with a column mapping.

Format ``table``: any CSV / TSV / Parquet, one file per domain, read with the column names given in the
config (``columns: {user: ..., item: ..., rating: ..., timestamp: ...}``); without a header, columns are
named ``column_1``, ``column_2``, ... A new dataset of this shape is one YAML (docs/datasets.md).
RecBole atomic files (``.inter``, ``.item``, ``.user``; format ``recbole``, :mod:`.recbole`) are
tab-separated with a header of ``name:type`` fields (``user_id:token``); the ``:type`` suffix is dropped.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import Field

from dacdr.data.dataset import CrossDomainData
from dacdr.data.loaders.base import Log, RatingOptions, reading, register_loader
from dacdr.data.loaders.common import reject_out_of_range
from dacdr.data.loaders.lines import DEFAULT_BLOCK_BYTES, Rejects, open_text_bytes, parse_lines

RATING_FIELDS = ("user", "item", "rating", "timestamp")


def read_header(path: str | Path, separator: str) -> list[str]:
    """Column names of the first line; RecBole's ``:type`` suffixes removed."""
    with open_text_bytes(path) as f:
        first = f.readline().decode("utf-8-sig").rstrip("\r\n")
    if not first:
        raise ValueError(f"{path}: empty file (expected a header line)")
    return [name.split(":", 1)[0].strip() for name in first.split(separator)]


def read_ratings_table(
    path: str | Path,
    columns: dict[str, str],
    rejects: Rejects,
    *,
    separator: str = ",",
    header: bool = True,
    timestamp_divisor: int = 1,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[pl.DataFrame, int, bool]:
    """Ratings of one table: (user, item, label, timestamp, line), lines read, whether it has timestamps.

    ``columns`` maps ``user``, ``item``, ``rating`` and optionally ``timestamp`` to the file's column names.
    Parquet rows are numbered from 1 in ``line``.
    """
    path = Path(path)
    missing_keys = [k for k in ("user", "item", "rating") if k not in columns]
    if missing_keys:
        raise ValueError(f"columns mapping for {path.name} lacks {missing_keys} (have {sorted(columns)})")
    unknown = sorted(set(columns) - set(RATING_FIELDS))
    if unknown:
        raise ValueError(f"columns mapping for {path.name}: unknown key(s) {unknown}; allowed {list(RATING_FIELDS)}")
    has_ts = "timestamp" in columns

    if path.suffix == ".parquet":
        names = pl.read_parquet_schema(path).names()
    elif header:
        names = read_header(path, separator)
    else:
        with open_text_bytes(path) as f:
            width = len(f.readline().decode("utf-8", errors="replace").rstrip("\r\n").split(separator))
        names = [f"column_{i + 1}" for i in range(width)]
    absent = [f"{k}={v!r}" for k, v in columns.items() if v not in names]
    if absent:
        raise ValueError(f"{path.name}: column(s) {', '.join(absent)} not found (columns: {names})")

    def post(df: pl.DataFrame) -> pl.DataFrame:
        out = [
            pl.col(columns["user"]).cast(pl.String).str.strip_chars().alias("user"),
            pl.col(columns["item"]).cast(pl.String).str.strip_chars().alias("item"),
            pl.col(columns["rating"]).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False).alias("label"),
        ]
        if has_ts:
            ts = pl.col(columns["timestamp"]).cast(pl.String).str.strip_chars()
            out.append((ts.cast(pl.Float64, strict=False).cast(pl.Int64, strict=False) // timestamp_divisor)
                       .alias("timestamp"))
        else:
            out.append(pl.lit(None, dtype=pl.Int64).alias("timestamp"))
        df = df.select(out)
        # Empty strings are missing values, not ids.
        return df.with_columns(pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c in ("user", "item"))

    required = ["user", "item", "label"] + (["timestamp"] if has_ts else [])
    if path.suffix == ".parquet":
        df = pl.read_parquet(path, columns=list(dict.fromkeys(columns.values())))
        n = df.height
        df = post(df).with_columns(pl.int_range(1, n + 1, dtype=pl.Int64).alias("line"))
        bad = df.select(pl.any_horizontal(pl.col(c).is_null() for c in required)).to_series()
        for row in df.filter(bad).iter_rows(named=True):
            rejects.add(path.name, row["line"], "missing or invalid field(s) "
                        + ", ".join(c for c in required if row[c] is None), str(row))
        return df.filter(~bad), n, has_ts

    schema = dict.fromkeys(names, pl.String)

    def parse(block: bytes) -> pl.DataFrame:
        return pl.read_csv(io.BytesIO(block), has_header=False, schema=schema, separator=separator,
                           quote_char=None)

    df, n = parse_lines(path, parse, rejects, required=required, block_bytes=block_bytes,
                        skip_header=header, post=post)
    if not df.width:
        df = pl.DataFrame(schema={"user": pl.String, "item": pl.String, "label": pl.Float64,
                                  "timestamp": pl.Int64, "line": pl.Int64})
    return df, n, has_ts


def read_recbole_items(path: str | Path, genre_field: str = "genre") -> pl.DataFrame:
    """A RecBole ``.item`` file: every column as a string, header names without ``:type``."""
    names = read_header(path, "\t")
    df = pl.read_csv(path, separator="\t", has_header=False, skip_rows=1, schema=dict.fromkeys(names, pl.String),
                     quote_char=None)
    if "item_id" not in df.columns:
        raise ValueError(f"{Path(path).name}: no item_id column (columns: {names})")
    return df


def default_columns() -> dict[str, str]:
    return {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"}


class ColumnOptions(RatingOptions):
    """Ratings in tables whose columns are mapped by name."""

    columns: dict[str, str] = Field(
        default_factory=default_columns,
        description="user, item, rating[, timestamp] -> the file's column names",
    )
    timestamp_divisor: int = Field(1, gt=0, description="divide timestamps by this (1000 for ms)")

    def read_tables(
        self, rejects: Rejects, log: Log, separator: str, header: bool, columns: dict[str, dict[str, str]] | None = None
    ) -> tuple[dict[str, pl.DataFrame], bool]:
        """Each file's ratings (range-checked), keyed as in `files`, and whether all have timestamps;
        `columns` overrides the mapping per key."""
        tables: dict[str, pl.DataFrame] = {}
        has_ts = True
        for key, path in self.files.items():
            with reading(path):
                df, n, ts = read_ratings_table(path, (columns or {}).get(key, self.columns), rejects,
                                               separator=separator, header=header,
                                               timestamp_divisor=self.timestamp_divisor,
                                               block_bytes=self.block_mb << 20)
            has_ts = has_ts and ts
            log(f"{key}: {n:,} lines read from {Path(path).name}, {df.height:,} ratings")
            tables[key] = reject_out_of_range(df, self.label_range, Path(path).name, rejects)
        return tables, has_ts


@register_loader
class TableOptions(ColumnOptions):
    """Any CSV / TSV / Parquet of ratings, one file per domain."""

    format: Literal["table"]
    separator: str = Field(",", description="field separator ('\\t' for TSV); Parquet ignores it")
    header: bool = Field(True, description="whether the first line names the columns")

    def load(self, rejects: Rejects, log: Log = print, stats: dict | None = None) -> CrossDomainData:
        tables, has_ts = self.read_tables(rejects, log, self.separator, self.header)
        return self.rating_dataset(tables, rejects, log, stats, has_timestamps=has_ts)
