"""Out-of-core samples: prepare a dataset that does not fit in memory, and stream it into training.

`build_streaming` reads the interactions one Parquet row group at a time and never holds them all:

1. **Vocabularies.** One pass over the `user` column (and ratings); items and domains come from their
   small tables. The user vocabulary is the one resident per-user structure.
2. **Bucketing.** A second pass validates each row group, encodes it to integers and appends its rows to
   one of `B` on-disk buckets by user (an external hash partition): every user's rows end up in one bucket.
3. **Per bucket** (one bucket in memory at a time, ~2M rows by default): source events are sorted by
   (user, time) and appended to one memory-mapped token table `events.npy`; each sample gets its sequence
   range into that table; the time split (P1) runs bucket by bucket, which is exact because each of its rules
   is per (user, domain) or hashes the global row number, never the position in memory. Training
   samples are shuffled inside the bucket and written to `train_target.parquet` / `train_source.parquet` in
   row groups of `shard_rows`; validation and test samples (a small share) are kept in `eval.npz`.

In training, `ShardStream` (a `torch.utils.data.IterableDataset`) gives each (rank, data-loader worker) its
own row groups, reshuffled every epoch, and gathers sequences from the memory-mapped events. Resident: the
vocabularies, the item table, the validation/test samples and one row group per worker; the event table is
paged in by the OS (file-backed memory it can drop).

For the same options the samples, sequences and splits are those of the in-memory `prepare` (tests check
it); only the order of training samples differs.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dacdr.config import DataConfig
from dacdr.data.batches import Batch, BatchGatherer
from dacdr.data.dataset import (
    REFERENCE_COLUMNS,
    CrossDomainData,
    DatasetSpec,
    check_interaction_block,
    interaction_files,
    load_static_tables,
)
from dacdr.data.features import FeatureSpec, Vocabularies
from dacdr.data.samples import (
    PreparedData,
    Selector,
    TokenTables,
    counted_fields,
    encode_rows,
    limit_embeddings,
    rating_values,
    sequence_ranges,
    source_events,
    split_rows,
    token_tables,
    vocabularies,
)
from dacdr.data.splits import Split
from dacdr.distributed.context import DistContext

STREAM_FORMAT = 2  # 2: event_user.npy / event_time.npy
ROWS_PER_BUCKET = 2_000_000
SHARD_KINDS = ("train_target", "train_source")
SHARD_COLUMNS = ("row", "user", "domain", "item", "label", "seq_start", "seq_end")
EVAL_COLUMNS = ("user", "domain", "item", "label", "timestamp", "seq_start", "seq_end", "row")

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------------
# Reading the interactions row group by row group
# --------------------------------------------------------------------------------------------------


def _row_groups(root: Path) -> list[tuple[Path, str, int, int]]:
    """(file, display name, row group, rows) of every interactions row group, in file order."""
    out = []
    for file, name in interaction_files(root):
        meta = pq.ParquetFile(file).metadata
        out += [(file, name, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    return out


def _read_group(file: Path, group: int, columns: list[str] | None = None) -> pl.DataFrame:
    with pq.ParquetFile(file) as f:
        names = f.schema_arrow.names
        cols = None if columns is None else [c for c in columns if c in names]
        return pl.from_arrow(f.read_row_group(group, columns=cols))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# On-disk buckets: append-only raw column files
# --------------------------------------------------------------------------------------------------

_BUCKET_DTYPES = {
    "is_source": np.bool_, "row": np.int64, "user": np.int64, "domain": np.int64, "item": np.int64, "behaviour": np.int64,
    "label": np.float32, "timestamp": np.int64, "rating": np.int64,
    **dict.fromkeys(REFERENCE_COLUMNS, np.float32),
}


class _Buckets:
    def __init__(self, directory: Path, n: int, columns: list[str]):
        self.directory, self.n, self.columns = directory, n, columns
        directory.mkdir(parents=True, exist_ok=True)
        self.files = {(b, c): open(directory / f"{b:05d}.{c}", "wb") for b in range(n) for c in columns}  # noqa: SIM115
        self.rows = np.zeros(n, dtype=np.int64)

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        bucket = arrays["user"] % self.n
        order = np.argsort(bucket, kind="stable")  # stable: rows keep file order inside a bucket
        bounds = np.searchsorted(bucket[order], np.arange(self.n + 1))
        for c in self.columns:
            col = arrays[c][order].astype(_BUCKET_DTYPES[c], copy=False)
            for b in range(self.n):
                if bounds[b + 1] > bounds[b]:
                    col[bounds[b] : bounds[b + 1]].tofile(self.files[(b, c)])
        self.rows += np.diff(bounds)

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def load(self, b: int) -> dict[str, np.ndarray]:
        return {c: np.fromfile(self.directory / f"{b:05d}.{c}", dtype=_BUCKET_DTYPES[c]) for c in self.columns}

    def remove(self, b: int) -> None:
        for c in self.columns:
            (self.directory / f"{b:05d}.{c}").unlink(missing_ok=True)


class _ShardWriter:
    """Writes rows to one Parquet file in row groups of exactly `shard_rows` (the last may be shorter)."""

    SCHEMA = pa.schema([(c, pa.float32() if c == "label" else pa.int64()) for c in SHARD_COLUMNS])

    def __init__(self, path: Path, shard_rows: int):
        self.writer = pq.ParquetWriter(path, self.SCHEMA, compression="zstd")
        self.shard_rows = shard_rows
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_rows = 0
        self.groups: list[int] = []
        self.label_sum = 0.0

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        self.pending.append({c: arrays[c] for c in SHARD_COLUMNS})
        self.pending_rows += len(arrays["label"])
        self.label_sum += float(arrays["label"].sum(dtype=np.float64))
        while self.pending_rows >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, n: int) -> None:
        merged = {c: np.concatenate([p[c] for p in self.pending]) for c in SHARD_COLUMNS}
        head = pa.table({c: merged[c][:n] for c in SHARD_COLUMNS}, schema=self.SCHEMA)
        self.writer.write_table(head, row_group_size=n)
        self.groups.append(n)
        rest = {c: merged[c][n:] for c in SHARD_COLUMNS}
        self.pending_rows -= n
        self.pending = [rest] if self.pending_rows else []

    def close(self) -> list[int]:
        if self.pending_rows:
            self._flush(self.pending_rows)
        self.writer.close()
        return self.groups


# --------------------------------------------------------------------------------------------------
# The prepared, on-disk data
# --------------------------------------------------------------------------------------------------


@dataclass
class StreamingData:
    """A streaming-prepared dataset: small tables in memory, events memory-mapped, training samples on disk."""

    directory: Path
    spec: FeatureSpec
    vocabs: Vocabularies
    item_table: np.ndarray
    domain_table: np.ndarray
    event_tokens: np.ndarray
    """[events + 1, len(sequence_fields)] int32, memory-mapped; row 0 is padding"""
    eval_samples: dict[str, np.ndarray]
    """validation rows, then test rows, each in dataset row order"""
    n_valid: int
    test_cold: np.ndarray
    shards: dict[str, list[int]]
    """rows of each row group of `train_target.parquet` / `train_source.parquet`"""
    meta: dict = field(default_factory=dict)
    embedding_maps: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: str | Path) -> StreamingData:
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("format") != STREAM_FORMAT:
            raise ValueError(f"{directory}: streaming format {meta.get('format')!r}, expected {STREAM_FORMAT}")
        with np.load(directory / "tables.npz", allow_pickle=False) as z:
            tables = {k: z[k] for k in z.files}
        with np.load(directory / "eval.npz", allow_pickle=False) as z:
            ev = {k: z[k] for k in z.files}
        return cls(
            directory=directory,
            spec=FeatureSpec.model_validate_json((directory / "feature_spec.json").read_text()),
            vocabs=Vocabularies.load(directory / "vocabs.json"),
            item_table=tables["item_table"],
            domain_table=tables["domain_table"],
            # copy-on-write mapping: pages are read lazily and shared; torch accepts it as a writable array
            event_tokens=np.load(directory / "events.npy", mmap_mode="c"),
            eval_samples={k: v for k, v in ev.items() if k != "test_cold"},
            n_valid=int(meta["n_valid"]),
            test_cold=ev["test_cold"],
            shards={k: list(v) for k, v in meta["shards"].items()},
            meta=meta,
            embedding_maps={k.removeprefix("embmap_"): v for k, v in tables.items() if k.startswith("embmap_")},
        )

    @property
    def n_events(self) -> int:
        return len(self.event_tokens) - 1

    def n_train(self, train_on: str) -> int:
        return sum(sum(self.shards[k]) for k in _kinds(train_on))

    def label_mean(self, train_on: str) -> float:
        n = self.n_train(train_on)
        return sum(self.meta["label_sum"][k] for k in _kinds(train_on)) / n if n else 0.5

    def domain_item_counts(self, field: str) -> np.ndarray | None:
        """Not counted: the training samples are on disk in shards (a model falls back to its plain start)."""
        return None

    def eval_view(self) -> PreparedData:
        """Validation and test samples as a `PreparedData` whose training index sets are empty."""
        n_test = len(self.test_cold)
        empty = np.zeros(0, dtype=np.int64)
        split = Split(empty, empty, np.arange(self.n_valid), np.arange(self.n_valid, self.n_valid + n_test),
                      self.test_cold)
        return PreparedData(self.spec, self.vocabs, self.item_table, self.domain_table, {}, self.eval_samples,
                            split, dict(self.meta.get("prepared_meta", {})), self.embedding_maps)

    def eval_gatherer(self) -> BatchGatherer:
        return BatchGatherer.over(self.item_table, self.domain_table, self.event_tokens, self.eval_samples,
                             self.spec.max_len)

    def stream(self, train_on: str, batch_size: int, epoch_seed: int, ctx: DistContext) -> ShardStream:
        return ShardStream(self.directory, {k: self.shards[k] for k in _kinds(train_on)}, self.item_table,
                           self.domain_table, self.spec.max_len, batch_size, epoch_seed, ctx.rank, ctx.world)

    def training_set(self, train_on: str, select: Selector | None = None) -> ShardSet:
        if select is not None:
            raise ValueError("this training phase selects samples in memory; use data.streaming: false")
        _kinds(train_on)
        return ShardSet(self, train_on)

    def source_events(self) -> dict[str, np.ndarray]:
        """The source events as `PreparedData.events` holds them: `user`, `timestamp` and one column per
        sequence field, sorted by (user, time); memory-mapped, not loaded."""
        tokens = self.event_tokens[1:]
        out = {"user": np.load(self.directory / "event_user.npy", mmap_mode="r"),
               "timestamp": np.load(self.directory / "event_time.npy", mmap_mode="r")}
        return out | {f: tokens[:, j] for j, f in enumerate(self.spec.sequence_fields)}

    def train_batches(
        self, train_on: str, batch_size: int, epoch_seed: int, ctx: DistContext, num_workers: int = 0
    ) -> tuple[int, Iterator[Batch]]:
        """(steps, batches) of one epoch for this rank; every rank gets the same number of steps (DDP
        needs it): the smallest rank's count, so no rank waits on a collective the others skip."""
        stream = self.stream(train_on, batch_size, epoch_seed, ctx)
        steps = min(stream.batches_of_rank(r, max(num_workers, 1)) for r in range(ctx.world))
        loader = DataLoader(stream, batch_size=None, num_workers=num_workers)
        return steps, iter(loader)


@dataclass
class ShardSet:
    """Streamed training samples: the row groups of one or both shard files."""

    data: StreamingData
    train_on: str

    def __len__(self) -> int:
        return self.data.n_train(self.train_on)

    def epoch(
        self, batch_size: int, generator: torch.Generator, ctx: DistContext, num_workers: int = 0,
        history: bool = True,
    ) -> tuple[int, Iterator[Batch]]:
        # `history=False` is a saving, not a contract: streamed batches keep their histories.
        return self.data.train_batches(self.train_on, batch_size, generator.initial_seed(), ctx, num_workers)


def _kinds(train_on: str) -> tuple[str, ...]:
    kinds = {"targets": ("train_target",), "source": ("train_source",),
             "source+targets": ("train_target", "train_source")}
    if train_on not in kinds:
        raise ValueError(f"unknown train_on {train_on!r}")
    return kinds[train_on]


class ShardStream(IterableDataset):
    """Training batches read from Parquet row groups, sharded by rank x data-loader worker.

    Each epoch the row groups are permuted with `epoch_seed`; slot `rank * workers + worker` takes every
    `world * workers`-th of them. Rows are shuffled inside each row group; a batch may span two groups.
    """

    def __init__(
        self, directory: Path, shards: dict[str, list[int]], item_table: np.ndarray, domain_table: np.ndarray,
        max_len: int, batch_size: int, epoch_seed: int, rank: int = 0, world: int = 1,
    ):
        super().__init__()
        self.directory, self.item_table, self.domain_table = directory, item_table, domain_table
        self.max_len, self.batch_size, self.epoch_seed = max_len, batch_size, epoch_seed
        self.rank, self.world = rank, world
        self.groups = [(k, g, n) for k, sizes in shards.items() for g, n in enumerate(sizes)]

    def assignment(self, rank: int, worker: int, workers: int) -> list[int]:
        order = np.random.default_rng(self.epoch_seed).permutation(len(self.groups))
        return order[rank * workers + worker :: self.world * workers].tolist()

    def batches_of_rank(self, rank: int, workers: int) -> int:
        return sum(
            math.ceil(sum(self.groups[g][2] for g in self.assignment(rank, w, workers)) / self.batch_size)
            for w in range(workers)
        )

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        tokens = np.load(self.directory / "events.npy", mmap_mode="c")
        files: dict[str, pq.ParquetFile] = {}
        pending: list[dict[str, np.ndarray]] = []
        pending_rows = 0
        for g in self.assignment(self.rank, worker, workers):
            kind, group, _ = self.groups[g]
            if kind not in files:
                files[kind] = pq.ParquetFile(self.directory / f"{kind}.parquet")
            table = files[kind].read_row_group(group, columns=list(SHARD_COLUMNS))
            rows = {c: table.column(c).to_numpy() for c in SHARD_COLUMNS}
            perm = np.random.default_rng([self.epoch_seed, g]).permutation(len(rows["label"]))
            pending.append({c: v[perm] for c, v in rows.items()})
            pending_rows += len(perm)
            while pending_rows >= self.batch_size:
                merged = {c: np.concatenate([p[c] for p in pending]) for c in SHARD_COLUMNS}
                for start in range(0, pending_rows - self.batch_size + 1, self.batch_size):
                    yield self._batch(tokens, {c: v[start : start + self.batch_size] for c, v in merged.items()})
                used = (pending_rows // self.batch_size) * self.batch_size
                pending = [{c: v[used:] for c, v in merged.items()}]
                pending_rows -= used
        if pending_rows:
            merged = {c: np.concatenate([p[c] for p in pending]) for c in SHARD_COLUMNS}
            yield self._batch(tokens, merged)

    def _batch(self, tokens: np.ndarray, rows: dict[str, np.ndarray]) -> Batch:
        g = BatchGatherer.over(self.item_table, self.domain_table, tokens, rows, self.max_len)
        return g.gather(torch.arange(len(rows["label"])))


# --------------------------------------------------------------------------------------------------
# Preparation
# --------------------------------------------------------------------------------------------------


def _vocabularies(static: CrossDomainData, groups: list[tuple[Path, str, int, int]]) -> Vocabularies:
    """Pass 1: the user (and rating) values of the interactions, one row group at a time."""
    rating = static.spec.task == "rating"
    users: list[pl.Series] = []
    ratings: list[pl.Series] = []
    for file, _, g, _ in groups:
        df = _read_group(file, g, ["user", "label"] if rating else ["user"])
        users.append(df["user"].cast(pl.String).unique())
        if rating:
            ratings.append(rating_values(df["label"]).unique())
    user_values = pl.concat(users) if users else pl.Series("user", [], pl.String)
    return vocabularies(static, user_values, pl.concat(ratings) if ratings else None)


def _bucket_pass(
    static: CrossDomainData, vocabs: Vocabularies, groups: list[tuple[Path, str, int, int]], buckets: _Buckets,
    log: Log,
) -> dict[str, np.ndarray]:
    """Pass 2: validate, encode and bucket every row group; returns `counted_fields` of the whole dataset."""
    counts: dict[str, np.ndarray] = {}
    offset, file_offset, last_file = 0, 0, None
    columns: list[str] | None = None
    t0 = time.perf_counter()
    for i, (file, name, g, _) in enumerate(groups):
        if file != last_file:
            file_offset, last_file = 0, file
        # Row numbers in error messages are file-local, as in load_dataset.
        df = check_interaction_block(static, _read_group(file, g), name, file_offset)
        if columns is None:
            columns = df.columns
        elif df.columns != columns:
            raise ValueError(f"{name}: columns {df.columns} differ from the first part's {columns}")
        rows = encode_rows(df, vocabs, static.spec)
        rows["row"] = np.arange(offset, offset + df.height, dtype=np.int64)
        for f, c in counted_fields(rows, vocabs, static.spec).items():
            counts[f] = counts[f] + c if f in counts else c
        buckets.append(rows)
        offset += df.height
        file_offset += df.height
        if (i + 1) % 20 == 0:
            log(f"bucketed {offset:,} rows ({offset / (time.perf_counter() - t0):,.0f} rows/s)")
    return counts


def _bucket_samples(
    rows: dict[str, np.ndarray], spec: DatasetSpec, tables: TokenTables, options: dict[str, Any], event_offset: int,
) -> tuple[np.ndarray, dict[str, np.ndarray], Split, np.ndarray]:
    """One bucket: its event tokens (sorted by user, time), sequence ranges (global), split (local) and the
    order of its source rows as events."""
    rows["is_source"] = rows["is_source"].astype(bool)
    order, columns = source_events(rows, tables)
    cols = [columns[f] for f in tables.spec.sequence_fields]
    tokens = np.stack(cols, axis=1).astype(np.int32) if len(order) else np.zeros((0, len(cols)), np.int32)
    start, end = sequence_ranges(rows["user"][order], rows["timestamp"][order], rows["user"],
                                 rows["timestamp"], tables.spec.max_len)
    rows["seq_start"], rows["seq_end"] = start + event_offset, end + event_offset
    split = split_rows(rows, spec, "time", options["valid_share"], options["cold_start_share"],
                       options["source_sample_rate"], options["seed"], row_ids=rows["row"])
    return tokens, rows, split, order


def check_options(data: DataConfig) -> None:
    """Reject option combinations the chosen pipeline cannot honour, before any work."""
    if data.streaming and data.sequence_cutoff != "before":
        raise ValueError("data.sequence_cutoff: the streaming pipeline builds leak-free sequences only "
                         "('before'); use data.streaming: false for 'all'")
    if data.streaming and data.protocol != "time":
        # P2 draws its cold-start users over the whole user set of each target (splits.user_split), which a
        # bucket-by-bucket pass cannot reproduce; P2 datasets (Amazon pairs) fit in memory anyway.
        raise ValueError(f"data.streaming supports protocol 'time' only, got {data.protocol!r}; "
                         "use the in-memory path (data.streaming: false)")


def build_streaming(path: str | Path, out: Path, data: DataConfig, log: Log = print) -> None:
    """Prepare the dataset at `path` out of core into the (empty, temporary) directory `out`."""
    check_options(data)
    options = {"max_len": data.max_len, "protocol": data.protocol, "valid_share": data.valid_share,
               "cold_start_share": data.cold_start_share, "source_sample_rate": data.source_sample_rate,
               "seed": data.split_seed, "min_count": data.min_count, "hash_buckets": data.hash_buckets,
               "shard_rows": data.shard_rows, "sort_buckets": data.sort_buckets}
    _prepare_into(Path(path), out, options, log)


def _prepare_into(root: Path, out: Path, options: dict[str, Any], log: Log) -> None:
    t0 = time.perf_counter()
    static = load_static_tables(root)
    spec = static.spec
    if spec.test_start is None:
        raise ValueError(f"dataset {spec.name!r} has no test_start: the time protocol (P1) needs one")
    groups = _row_groups(root)
    n_rows = sum(g[3] for g in groups)
    vocabs = _vocabularies(static, groups)
    tables = token_tables(static, vocabs, options["max_len"])
    log(f"vocabularies: {len(vocabs['user']):,} users, {len(vocabs['item']):,} items "
        f"({time.perf_counter() - t0:.1f}s)")

    present = set(pq.ParquetFile(groups[0][0]).schema_arrow.names) if groups else set()
    columns = ["row", "user", "domain", "item", "behaviour", "label", "timestamp", "is_source"]
    columns += [c for c in REFERENCE_COLUMNS if c in present]
    columns += ["rating"] if spec.task == "rating" else []
    n_buckets = options["sort_buckets"] or max(1, math.ceil(n_rows / ROWS_PER_BUCKET))
    buckets = _Buckets(out / "buckets", n_buckets, columns)
    try:
        base = _bucket_pass(static, vocabs, groups, buckets, log)
    finally:
        buckets.close()
    t_bucket = time.perf_counter()
    log(f"bucketed {n_rows:,} rows into {n_buckets} buckets ({t_bucket - t0:.1f}s)")
    limit_embeddings(tables, vocabs, base, options["min_count"], options["hash_buckets"])
    fspec, maps = tables.spec, tables.maps

    n_events = int(sum(np.count_nonzero(np.fromfile(out / "buckets" / f"{b:05d}.is_source", np.bool_))
                       for b in range(n_buckets)))
    events = np.lib.format.open_memmap(out / "events.npy", mode="w+", dtype=np.int32,
                                       shape=(n_events + 1, len(fspec.sequence_fields)))
    events[0] = 0
    # Who and when of each event (not needed to train; a package's history store reads them).
    event_user = np.lib.format.open_memmap(out / "event_user.npy", mode="w+", dtype=np.int64, shape=(n_events,))
    event_time = np.lib.format.open_memmap(out / "event_time.npy", mode="w+", dtype=np.int64, shape=(n_events,))
    writers = {k: _ShardWriter(out / f"{k}.parquet", options["shard_rows"]) for k in SHARD_KINDS}
    eval_parts: dict[str, list[dict[str, np.ndarray]]] = {"valid": [], "test": []}
    offset = 0
    for b in range(n_buckets):
        arrays = buckets.load(b)
        tokens, arrays, split, order = _bucket_samples(arrays, spec, tables, options, offset)
        events[1 + offset : 1 + offset + len(tokens)] = tokens
        event_user[offset : offset + len(tokens)] = arrays["user"][order]
        event_time[offset : offset + len(tokens)] = arrays["timestamp"][order]
        offset += len(tokens)
        rng = np.random.default_rng([options["seed"], b])
        for kind, idx in (("train_target", split.train_target), ("train_source", split.train_source)):
            idx = idx[rng.permutation(len(idx))]
            writers[kind].add({c: arrays[c][idx] for c in SHARD_COLUMNS})
        keep = [c for c in (*EVAL_COLUMNS, *REFERENCE_COLUMNS) if c in arrays]
        eval_parts["valid"].append({c: arrays[c][split.valid] for c in keep})
        eval_parts["test"].append({c: arrays[c][split.test] for c in keep} | {"test_cold": split.test_cold})
        buckets.remove(b)
    for table in (events, event_user, event_time):
        table.flush()
    del events, event_user, event_time
    shutil.rmtree(out / "buckets", ignore_errors=True)
    shards = {k: w.close() for k, w in writers.items()}
    label_sum = {k: w.label_sum for k, w in writers.items()}

    # Validation and test rows in dataset row order, as the in-memory split lists them.
    eval_arrays: dict[str, np.ndarray] = {}
    parts = {}
    for name, chunks in eval_parts.items():
        merged = {c: np.concatenate([ch[c] for ch in chunks]) for c in chunks[0]}
        order = np.argsort(merged["row"], kind="stable")
        parts[name] = {c: v[order] for c, v in merged.items()}
    for c in parts["valid"]:
        eval_arrays[c] = np.concatenate([parts["valid"][c], parts["test"][c]])
    np.savez(out / "eval.npz", **eval_arrays, test_cold=parts["test"]["test_cold"])
    np.savez(out / "tables.npz", item_table=tables.item_table, domain_table=tables.domain_table,
             **{f"embmap_{k}": v for k, v in maps.items()})
    vocabs.save(out / "vocabs.json")
    (out / "feature_spec.json").write_text(fspec.model_dump_json(indent=1))
    seconds = time.perf_counter() - t0
    meta = {
        "format": STREAM_FORMAT,
        "dataset": spec.name,
        "options": options,
        "rows": n_rows,
        "events": n_events,
        "n_valid": len(parts["valid"]["label"]),
        "n_test": len(parts["test"]["label"]),
        "shards": shards,
        "label_sum": label_sum,
        "buckets": n_buckets,
        "seconds": seconds,
        "rows_per_s": n_rows / max(seconds, 1e-9),
        "prepared_meta": {"dataset": spec.name, "task": spec.task, "protocol": options["protocol"],
                          "seed": options["seed"], "streaming": True},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"prepared {n_rows:,} rows in {seconds:.1f}s ({meta['rows_per_s']:,.0f} rows/s): {n_events:,} events, "
        f"{sum(shards['train_target']):,} target / {sum(shards['train_source']):,} source training samples")


__all__ = ["ShardStream", "StreamingData", "build_streaming", "check_options"]
