"""Loaders: public rating / implicit-feedback datasets -> the dacdr layout (docs/data-format.md).

One module per source format (``amazon``, ``table`` for CSV / TSV / Parquet / RecBole atomic files,
``cdrib``); :func:`convert` reads a validated :class:`ConvertConfig`, streams the raw files with bounded
memory, writes malformed lines to ``<out>/rejects.tsv`` (never dropping them silently) and writes the
dataset with :func:`dacdr.data.dataset.write_dataset`. ``docs/datasets.md`` documents every format.
"""

from __future__ import annotations

import gzip
import json
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dacdr.data.dataset import CrossDomainData, DatasetError, write_dataset
from dacdr.data.loaders.amazon import JSON_FIELDS, read_metadata, read_reviews
from dacdr.data.loaders.cdrib import convert_cdrib
from dacdr.data.loaders.common import build_rating_dataset, reject_out_of_range
from dacdr.data.loaders.lines import DEFAULT_BLOCK_BYTES, Rejects
from dacdr.data.loaders.table import read_ratings_table, read_recbole_items

Format = Literal["amazon-2014", "amazon-2014-csv", "amazon-2018", "amazon-2023", "recbole", "table", "cdrib"]
REJECTS_FILE = "rejects.tsv"
REPORT_FILE = "conversion.json"


class ConvertConfig(BaseModel):
    """What to convert: a format, one file (or folder) per domain, and the format's options."""

    model_config = ConfigDict(extra="forbid")

    format: Format = Field(description="source format (docs/datasets.md)")
    name: str = Field(description="dataset name written to dataset.json")
    source: str = Field(description="the source domain")
    targets: list[str] = Field(min_length=1, description="target domains")
    files: dict[str, str] = Field(
        default_factory=dict,
        description="domain -> ratings file (cdrib: domain -> folder); with `genre_domains`, one entry "
        "`all` for the single interactions file",
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Amazon: domain -> metadata file (item category and brand)"
    )
    columns: dict[str, str] = Field(
        default_factory=lambda: {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"},
        description="table / recbole: user, item, rating[, timestamp] -> the file's column names; a "
        "timestamp column absent from the file is ignored for recbole",
    )
    separator: str = Field(",", description="table: field separator ('\\t' for TSV); recbole is always tab")
    header: bool = Field(True, description="table: whether the first line names the columns")
    timestamp_divisor: int = Field(1, gt=0, description="table: divide timestamps by this (1000 for ms)")
    item_file: str | None = Field(None, description="recbole: the .item file (genre -> category, genre domains)")
    genre_domains: dict[str, list[str]] | None = Field(
        None,
        description="recbole: domain -> genres; an item goes to the first domain (in order) one of whose "
        "genres it lists; items with none are dropped (counted)",
    )
    label_range: tuple[float, float] = Field((1.0, 5.0), description="valid rating range; others are rejected")
    duplicates: Literal["last", "first", "mean"] = Field(
        "last", description="repeated (user, item) ratings in a domain: keep the last (file order), first or mean"
    )
    n_shared_users: int | None = Field(None, gt=0, description="cdrib: user ids below this are shared")
    train_negatives: int = Field(4, ge=1, description="cdrib: sampled negatives per training positive")
    valid_negatives: int = Field(99, ge=1, description="cdrib: sampled negatives per validation positive")
    negative_seed: int = Field(0, description="cdrib: seed of the sampled training / validation negatives")
    block_mb: int = Field(DEFAULT_BLOCK_BYTES >> 20, gt=0, description="decompressed MiB parsed per block")

    @model_validator(mode="after")
    def _check(self) -> ConvertConfig:
        domains = [self.source, *self.targets]
        if len(set(domains)) != len(domains):
            raise ValueError(f"source and targets must be distinct, got {domains}")
        if self.genre_domains is not None:
            if self.format != "recbole":
                raise ValueError("genre_domains is for format 'recbole'")
            if sorted(self.genre_domains) != sorted(domains):
                raise ValueError(f"genre_domains must name exactly the domains {domains}")
            if "all" not in self.files or self.item_file is None:
                raise ValueError("genre_domains needs files: {all: <.inter>} and item_file")
        else:
            missing = [d for d in domains if d not in self.files]
            if missing:
                raise ValueError(f"files: no file for domain(s) {missing}")
        if self.format == "cdrib" and self.n_shared_users is None:
            raise ValueError("format 'cdrib' needs n_shared_users (2179 for the published game/video splits)")
        return self

    def resolve(self, base: Path) -> ConvertConfig:
        """Relative paths made absolute against ``base`` (the config file's folder)."""

        def fix(p: str) -> str:
            q = Path(p).expanduser()
            return str(q if q.is_absolute() else (base / q).resolve())

        return self.model_copy(update={
            "files": {k: fix(v) for k, v in self.files.items()},
            "metadata": {k: fix(v) for k, v in self.metadata.items()},
            "item_file": fix(self.item_file) if self.item_file else None,
        })


def _check_paths(cfg: ConvertConfig) -> None:
    folders = cfg.format == "cdrib"  # cdrib: one folder per domain; every other input is a file
    for label, paths in (("files", cfg.files), ("metadata", cfg.metadata)):
        for key, p in paths.items():
            if not Path(p).exists():
                raise FileNotFoundError(f"{label}.{key}: {p} does not exist")
            if label == "files" and folders and not Path(p).is_dir():
                raise DatasetError(f"{label}.{key}: {p} is a file, format 'cdrib' expects a folder")
            if not (label == "files" and folders) and Path(p).is_dir():
                raise DatasetError(f"{label}.{key}: {p} is a directory, expected a file")
    if cfg.item_file and not Path(cfg.item_file).exists():
        raise FileNotFoundError(f"item_file: {cfg.item_file} does not exist")
    if cfg.item_file and Path(cfg.item_file).is_dir():
        raise DatasetError(f"item_file: {cfg.item_file} is a directory, expected a file")


@contextmanager
def _reading(path: str | Path) -> Iterator[None]:
    """Turn the ways a damaged input file fails (in gzip, zlib, Polars, the OS) into one line naming it."""
    try:
        yield
    except EOFError as e:
        raise DatasetError(f"{path}: truncated compressed file: it ends before its gzip stream does ({e})") from e
    except (zlib.error, gzip.BadGzipFile) as e:
        raise DatasetError(f"{path}: corrupt gzip data ({e})") from e
    except IsADirectoryError as e:
        raise DatasetError(f"{path}: is a directory, expected a file") from e
    except pl.exceptions.PolarsError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"{path}: unreadable ({first})") from e
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DatasetError(f"{path}: cannot be read ({e.strerror or e})") from e


def load(
    cfg: ConvertConfig, rejects: Rejects, log: Callable[[str], None] = print, stats: dict | None = None
) -> CrossDomainData:
    """Read the raw files of ``cfg`` into an in-memory dataset (validated when written).

    A damaged file (truncated or corrupt gzip, corrupt Parquet, a folder) is a `DatasetError` naming it; a
    domain left with no ratings is one too. ``stats``, when given, receives ``merged_duplicates`` per domain.
    """
    _check_paths(cfg)
    block = cfg.block_mb << 20
    generator = {"format": cfg.format, "files": cfg.files, "duplicates": cfg.duplicates}
    if cfg.format == "cdrib":
        assert cfg.n_shared_users is not None
        return convert_cdrib(
            {d: Path(p) for d, p in cfg.files.items()}, cfg.source, cfg.targets[0],
            n_shared_users=cfg.n_shared_users, train_negatives=cfg.train_negatives,
            valid_negatives=cfg.valid_negatives, negative_seed=cfg.negative_seed, rejects=rejects,
            name=cfg.name, log=log,
        )
    tables: dict[str, pl.DataFrame] = {}
    has_ts = True
    item_features: pl.DataFrame | None = None
    if cfg.format in JSON_FIELDS or cfg.format == "amazon-2014-csv":
        for domain, path in cfg.files.items():
            t0 = time.perf_counter()
            with _reading(path):
                df, n = read_reviews(path, cfg.format, rejects, block)
            log(f"{domain}: {n:,} lines read from {Path(path).name}, {df.height:,} ratings "
                f"({time.perf_counter() - t0:.1f} s)")
            tables[domain] = reject_out_of_range(df, cfg.label_range, Path(path).name, rejects)
        if cfg.metadata:
            wanted = set(pl.concat([t["item"] for t in tables.values()]).unique().to_list())
            metas = []
            for p in cfg.metadata.values():
                with _reading(p):
                    metas.append(read_metadata(p, rejects, wanted, block))
            item_features = pl.concat(metas).unique(subset="item", keep="first")
    else:
        columns = dict(cfg.columns)
        sep = "\t" if cfg.format == "recbole" else cfg.separator
        header = True if cfg.format == "recbole" else cfg.header
        for key, path in cfg.files.items():
            cols = columns
            if cfg.format == "recbole" and "timestamp" in cols:
                from dacdr.data.loaders.table import read_header

                with _reading(path):
                    names = read_header(path, "\t")
                if cols["timestamp"] not in names:
                    cols = {k: v for k, v in cols.items() if k != "timestamp"}
            with _reading(path):
                df, n, ts = read_ratings_table(path, cols, rejects, separator=sep, header=header,
                                               timestamp_divisor=cfg.timestamp_divisor, block_bytes=block)
            has_ts = has_ts and ts
            log(f"{key}: {n:,} lines read from {Path(path).name}, {df.height:,} ratings")
            tables[key] = reject_out_of_range(df, cfg.label_range, Path(path).name, rejects)
        if cfg.item_file:
            with _reading(cfg.item_file):
                items = read_recbole_items(cfg.item_file)
            if "genre" in items.columns:
                item_features = items.select(
                    pl.col("item_id").alias("item"), pl.col("genre").str.split(" ").list.first().alias("category")
                )
            if cfg.genre_domains is not None:
                tables = _split_by_genre(tables["all"], items, cfg.genre_domains, log)
    for domain in (cfg.source, *cfg.targets):
        if domain in tables and tables[domain].height == 0:
            where = cfg.files.get(domain) or cfg.files.get("all")
            raise DatasetError(f"{domain}: no ratings in {where} (empty, only a header, or every line rejected; "
                               f"{rejects.count} lines rejected: {rejects.by_reason or 'none'})")
    if not has_ts:
        log("no timestamps in the data: file order is the clock, and source sequences hold the user's "
            "whole source history")
    merged: dict[str, int] = {}
    data = build_rating_dataset(
        cfg.name, cfg.source, cfg.targets, tables, has_timestamps=has_ts, label_range=cfg.label_range,
        duplicates=cfg.duplicates, item_features=item_features, generator=generator, log=log,
        merged_counts=merged,
    )
    if stats is not None:
        stats["merged_duplicates"] = merged
    return data


def _split_by_genre(
    ratings: pl.DataFrame, items: pl.DataFrame, groups: dict[str, list[str]], log: Callable[[str], None]
) -> dict[str, pl.DataFrame]:
    if "genre" not in items.columns:
        raise ValueError("genre_domains needs a `genre` column in item_file")
    genres = items.select(pl.col("item_id").alias("item"), pl.col("genre").fill_null("").str.split(" "))
    domain_expr = pl.lit(None, dtype=pl.String)
    for domain, wanted in reversed(list(groups.items())):  # the first listed domain wins
        domain_expr = pl.when(pl.col("genre").list.eval(pl.element().is_in(wanted)).list.any()).then(
            pl.lit(domain)).otherwise(domain_expr)
    item_domain = genres.with_columns(domain_expr.alias("domain")).select("item", "domain")
    joined = ratings.join(item_domain, on="item", how="left", maintain_order="left")
    dropped = joined.filter(pl.col("domain").is_null()).height
    if dropped:
        log(f"{dropped:,} ratings of items in none of the genre domains dropped")
    return {d: joined.filter(pl.col("domain") == d).drop("domain") for d in groups}


def convert(
    cfg: ConvertConfig, out: str | Path, *, overwrite: bool = False, log: Callable[[str], None] = print
) -> Path:
    """Convert the raw files of ``cfg`` into a dataset directory at ``out``.

    Rejected lines go to ``<out>/rejects.tsv``; counts and timings to ``<out>/conversion.json``.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True to replace it)")
    t0 = time.perf_counter()
    staging = out.parent / f".{out.name}.rejects.tsv"
    rejects = Rejects(staging)
    stats: dict = {}
    try:
        try:
            data = load(cfg, rejects, log, stats)
        finally:
            rejects.close()
        write_dataset(data, out, overwrite=overwrite)
    except BaseException:
        staging.unlink(missing_ok=True)  # a failed conversion leaves nothing behind
        raise
    if staging.exists():
        staging.replace(out / REJECTS_FILE)
        rejects.path = out / REJECTS_FILE
    report = {
        "config": cfg.model_dump(mode="json"),
        "rows": data.interactions.height,
        "rows_per_domain": dict(data.interactions.group_by("domain").len().iter_rows()),
        "rejected_lines": rejects.count,
        "rejected_by_reason": rejects.by_reason,
        "merged_duplicates": stats.get("merged_duplicates", {}),
        "has_timestamps": data.spec.has_timestamps,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {out}: {data.interactions.height:,} interactions; {rejects.summary()}")
    return out


__all__ = ["ConvertConfig", "Rejects", "convert", "load"]
