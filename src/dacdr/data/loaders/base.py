"""What every loader is: an options model (its own fields beside the common ones) that knows how to load.

A loader is one module of ``dacdr.data.loaders``: a subclass of :class:`LoaderOptions` whose ``format`` field is
a ``Literal`` of the format names it reads, decorated with :func:`register_loader`, with a ``load`` method
that returns the dataset in memory. ``dacdr.data.loaders`` imports every module of the package and builds
``ConvertConfig``, the union of the registered options told apart by ``format``; so an option of one format
given to another is an error naming both the format and the field (``data.cdrib.separator: Extra inputs
are not permitted``).
"""

from __future__ import annotations

import gzip
import typing
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Literal, Self

import polars as pl
from pydantic import Field, model_validator

from dacdr.config import StrictModel
from dacdr.data.dataset import CrossDomainData, DatasetError
from dacdr.data.loaders.common import build_rating_dataset
from dacdr.data.loaders.lines import DEFAULT_BLOCK_BYTES, Rejects

Log = Callable[[str], None]


class LoaderOptions(StrictModel):
    """The fields every format has: what the dataset is called, its domains and one input per domain."""

    format: str = Field(description="source format (docs/datasets.md)")
    name: str = Field(description="dataset name written to dataset.json")
    source: str = Field(description="the source domain")
    targets: list[str] = Field(min_length=1, description="target domains")
    files: dict[str, str] = Field(default_factory=dict, description="domain -> input file (cdrib: folder)")

    path_fields: ClassVar[tuple[str, ...]] = ()
    """fields (a path, or a mapping of paths) resolved against the config's folder beside `files`"""
    folders: ClassVar[bool] = False
    """whether `files` are folders (cdrib) rather than files"""

    @property
    def domains(self) -> list[str]:
        return [self.source, *self.targets]

    @model_validator(mode="after")
    def _check_domains(self) -> Self:
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"source and targets must be distinct, got {self.domains}")
        self.check_files()
        return self

    def check_files(self) -> None:
        """One input per domain; a loader reading its domains from elsewhere overrides this."""
        missing = [d for d in self.domains if d not in self.files]
        if missing:
            raise ValueError(f"files: no file for domain(s) {missing}")

    def resolve(self, base: Path) -> Self:
        """Relative paths made absolute against ``base`` (the config file's folder)."""

        def fix(p: str) -> str:
            q = Path(p).expanduser()
            return str(q if q.is_absolute() else (base / q).resolve())

        update: dict[str, object] = {"files": {k: fix(v) for k, v in self.files.items()}}
        for f in self.path_fields:
            value = getattr(self, f)
            if isinstance(value, dict):
                update[f] = {k: fix(v) for k, v in value.items()}
            elif value:
                update[f] = fix(value)
        return self.model_copy(update=update)

    def check_paths(self) -> None:
        """Every input exists and is a file (a folder for `folders` loaders), named by its field."""
        inputs: list[tuple[str, str, bool]] = [(f"files.{k}", p, self.folders) for k, p in self.files.items()]
        for f in self.path_fields:
            value = getattr(self, f)
            items = value.items() if isinstance(value, dict) else [(None, value)] if value else []
            inputs += [(f if k is None else f"{f}.{k}", p, False) for k, p in items]
        for label, p, folder in inputs:
            if not Path(p).exists():
                raise FileNotFoundError(f"{label}: {p} does not exist")
            if folder and not Path(p).is_dir():
                raise DatasetError(f"{label}: {p} is a file, format {self.format!r} expects a folder")
            if not folder and Path(p).is_dir():
                raise DatasetError(f"{label}: {p} is a directory, expected a file")

    def load(self, rejects: Rejects, log: Log = print, stats: dict | None = None) -> CrossDomainData:
        """The dataset in memory (validated when written); ``stats`` receives counts such as merged duplicates."""
        raise NotImplementedError


class RatingOptions(LoaderOptions):
    """Explicit ratings read per domain, checked against a range and deduplicated."""

    label_range: tuple[float, float] = Field((1.0, 5.0), description="valid rating range; others are rejected")
    duplicates: Literal["last", "first", "mean"] = Field(
        "last", description="repeated (user, item) ratings in a domain: keep the last (file order), first or mean"
    )
    block_mb: int = Field(DEFAULT_BLOCK_BYTES >> 20, gt=0, description="decompressed MiB parsed per block")

    def rating_dataset(
        self,
        tables: dict[str, pl.DataFrame],
        rejects: Rejects,
        log: Log,
        stats: dict | None,
        has_timestamps: bool = True,
        item_features: pl.DataFrame | None = None,
    ) -> CrossDomainData:
        """The per-domain rating tables as a dataset: an empty domain is an error, duplicates merged."""
        for domain in self.domains:
            if domain in tables and tables[domain].height == 0:
                where = self.files.get(domain) or self.files.get("all")
                raise DatasetError(f"{domain}: no ratings in {where} (empty, only a header, or every line "
                                   f"rejected; {rejects.count} lines rejected: {rejects.by_reason or 'none'})")
        if not has_timestamps:
            log("no timestamps in the data: file order is the clock, and source sequences hold the user's "
                "whole source history")
        merged: dict[str, int] = {}
        data = build_rating_dataset(
            self.name, self.source, self.targets, tables, has_timestamps=has_timestamps,
            label_range=self.label_range, duplicates=self.duplicates, item_features=item_features,
            generator={"format": self.format, "files": self.files, "duplicates": self.duplicates}, log=log,
            merged_counts=merged,
        )
        if stats is not None:
            stats["merged_duplicates"] = merged
        return data


LOADERS: dict[str, type[LoaderOptions]] = {}
"""format name -> its options model (which loads)"""


def register_loader(cls: type[LoaderOptions]) -> type[LoaderOptions]:
    """Register `cls` under every name of its ``format: Literal[...]`` field."""
    names = typing.get_args(typing.get_type_hints(cls)["format"])
    if not names:
        raise TypeError(f"{cls.__name__}.format must be a Literal of format names")
    for name in names:
        if name in LOADERS:
            raise ValueError(f"format {name!r} registered twice ({LOADERS[name].__name__}, {cls.__name__})")
        LOADERS[name] = cls
    return cls


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
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
