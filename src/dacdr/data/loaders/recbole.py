"""RecBole atomic files (format ``recbole``): tab-separated ``.inter`` ratings with a ``name:type`` header,
one file per domain, or one file split into domains by the genres of a ``.item`` file (``genre_domains``)."""

from __future__ import annotations

from typing import ClassVar, Literal

import polars as pl
from pydantic import Field

from dacdr.data.dataset import CrossDomainData
from dacdr.data.loaders.base import Log, reading, register_loader
from dacdr.data.loaders.lines import Rejects
from dacdr.data.loaders.table import ColumnOptions, read_header, read_recbole_items


@register_loader
class RecboleOptions(ColumnOptions):
    """RecBole ``.inter`` files; a timestamp column the mapping names but a file lacks is ignored."""

    format: Literal["recbole"]
    item_file: str | None = Field(None, description="the .item file (genre -> category, genre domains)")
    genre_domains: dict[str, list[str]] | None = Field(
        None,
        description="domain -> genres; an item goes to the first domain (in order) one of whose genres it "
        "lists; items with none are dropped (counted). With it, `files` has one entry `all`",
    )

    path_fields: ClassVar[tuple[str, ...]] = ("item_file",)

    def check_files(self) -> None:
        if self.genre_domains is None:
            return super().check_files()
        if sorted(self.genre_domains) != sorted(self.domains):
            raise ValueError(f"genre_domains must name exactly the domains {self.domains}")
        if "all" not in self.files or self.item_file is None:
            raise ValueError("genre_domains needs files: {all: <.inter>} and item_file")

    def load(self, rejects: Rejects, log: Log = print, stats: dict | None = None) -> CrossDomainData:
        columns = {}
        for key, path in self.files.items():
            if "timestamp" in self.columns:
                with reading(path):
                    names = read_header(path, "\t")
                if self.columns["timestamp"] not in names:
                    columns[key] = {k: v for k, v in self.columns.items() if k != "timestamp"}
        tables, has_ts = self.read_tables(rejects, log, "\t", True, columns)
        item_features = None
        if self.item_file:
            with reading(self.item_file):
                items = read_recbole_items(self.item_file)
            if "genre" in items.columns:
                item_features = items.select(
                    pl.col("item_id").alias("item"), pl.col("genre").str.split(" ").list.first().alias("category")
                )
            if self.genre_domains is not None:
                tables = split_by_genre(tables["all"], items, self.genre_domains, log)
        return self.rating_dataset(tables, rejects, log, stats, has_timestamps=has_ts, item_features=item_features)


def split_by_genre(
    ratings: pl.DataFrame, items: pl.DataFrame, groups: dict[str, list[str]], log: Log
) -> dict[str, pl.DataFrame]:
    """One rating table per domain of `groups` (domain -> genres), by each item's first matching domain."""
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
