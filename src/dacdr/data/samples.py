"""Sample builder: turns a validated dataset into training-ready arrays, vectorised and cached.

Each row of the dataset becomes one sample ``(user, domain, item, label, timestamp)``. Its source-domain
behaviour sequence is not copied: the source events are stored once, sorted by (user, time), and a
sample only keeps ``[seq_start, seq_end)``, the range of its user's source events strictly before its
timestamp, at most ``max_len`` long. Batches gather the tokens from that range (`dacdr.data.batches`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch

from dacdr.config import DataConfig
from dacdr.data.dataset import REFERENCE_COLUMNS, CrossDomainData, DatasetSpec
from dacdr.data.features import OOV, PAD, FeatureSpec, Vocab, Vocabularies, embedding_maps, table_rows
from dacdr.data.splits import Split, period_split, time_split, user_split

if TYPE_CHECKING:
    from dacdr.data.batches import Batch, BatchGatherer
    from dacdr.distributed.context import DistContext

Selector = Callable[["PreparedData", np.ndarray], np.ndarray]
"""narrows a phase's training indices (e.g. to one row per overlapping user)"""


@dataclass
class IndexedSet:
    """In-memory training samples: indices into a `BatchGatherer`'s arrays."""

    gatherer: BatchGatherer
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def epoch(
        self, batch_size: int, generator: torch.Generator, ctx: DistContext, num_workers: int = 0,
        history: bool = True,
    ) -> tuple[int, Iterator[Batch]]:
        """(steps, batches) of this rank for one epoch: one shuffle for all ranks (the same generator), then
        an equal contiguous part each, so every rank takes the same number of steps (DDP needs it).
        `history=False`: the batches carry no source history (`seq` [B, 0, F]; gathering it is most of a small
        model's batch cost)."""
        idx = self.indices[torch.randperm(len(self.indices), generator=generator).numpy()]
        per_rank = len(idx) // ctx.world
        idx = idx[ctx.rank * per_rank : (ctx.rank + 1) * per_rank]
        return math.ceil(len(idx) / batch_size), self.gatherer.iterate(idx, batch_size,
                                                                       max_len=None if history else 0)


@dataclass
class PreparedData:
    """Everything a model and the trainer need, as flat numpy arrays."""

    spec: FeatureSpec
    vocabs: Vocabularies
    item_table: np.ndarray
    """[item vocab size, len(item_fields)]: the candidate tokens of each item index"""
    domain_table: np.ndarray
    """[domain vocab size, len(domain_fields)]: the domain tokens of each domain index"""
    events: dict[str, np.ndarray]
    """source events sorted by (user, timestamp): one array per sequence field, plus `user`, `timestamp`"""
    samples: dict[str, np.ndarray]
    """one entry per dataset row: user, domain, item, label, timestamp, seq_start, seq_end, is_source[, p_true, ...]"""
    split: Split
    meta: dict = field(default_factory=dict)
    embedding_maps: dict[str, np.ndarray] = field(default_factory=dict)
    """per limited field: vocab index -> embedding row (frequency threshold or hash); already applied to the
    tables and events above, kept to encode new raw values the same way"""
    _gatherer: BatchGatherer | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def n_samples(self) -> int:
        return len(self.samples["label"])

    # The trainer's data protocol (`dacdr.data.protocol.TrainingData`).
    def training_indices(self, train_on: str) -> np.ndarray:
        """Indices of the training samples of `train_on` ('targets', 'source' or 'source+targets')."""
        split = self.split
        parts = {"targets": (split.train_target,), "source": (split.train_source,),
                 "source+targets": (split.train_target, split.train_source)}
        if train_on not in parts:
            raise ValueError(f"unknown train_on {train_on!r}: expected one of {', '.join(parts)}")
        return np.concatenate(parts[train_on]) if len(parts[train_on]) > 1 else parts[train_on][0]

    def training_set(self, train_on: str, select: Selector | None = None) -> IndexedSet:
        idx = self.training_indices(train_on)
        return IndexedSet(self.gatherer(), select(self, idx) if select is not None else idx)

    def label_mean(self, train_on: str) -> float:
        idx = self.training_indices(train_on)
        return float(self.samples["label"][idx].mean()) if len(idx) else 0.5

    def domain_item_counts(self, field: str) -> np.ndarray | None:
        spec = self.spec
        idx = self.split.train_target
        values = self.item_table[self.samples["item"][idx], spec.item_fields.index(field)]
        counts = np.zeros((spec.vocab_sizes["domain"], spec.vocab_sizes[field]))
        np.add.at(counts, (self.samples["domain"][idx], values), 1.0)
        return counts

    def eval_view(self) -> PreparedData:
        return self

    def gatherer(self) -> BatchGatherer:
        """The batch builder over these arrays (built once, shared by training and evaluation)."""
        if self._gatherer is None:
            from dacdr.data.batches import BatchGatherer

            self._gatherer = BatchGatherer(self)
        return self._gatherer

    def eval_gatherer(self) -> BatchGatherer:
        return self.gatherer()

    def source_events(self) -> dict[str, np.ndarray]:
        return self.events

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"item_table": self.item_table, "domain_table": self.domain_table}
        arrays |= {f"event_{k}": v for k, v in self.events.items()}
        arrays |= {f"sample_{k}": v for k, v in self.samples.items()}
        arrays |= self.split.as_arrays()
        arrays |= {f"embmap_{k}": v for k, v in self.embedding_maps.items()}
        np.savez(directory / "arrays.npz", **arrays)
        self.vocabs.save(directory / "vocabs.json")
        (directory / "feature_spec.json").write_text(self.spec.model_dump_json(indent=1))
        (directory / "meta.json").write_text(json.dumps(self.meta, indent=1))

    @classmethod
    def load(cls, directory: Path) -> PreparedData:
        with np.load(directory / "arrays.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(
            spec=FeatureSpec.model_validate_json((directory / "feature_spec.json").read_text()),
            vocabs=Vocabularies.load(directory / "vocabs.json"),
            item_table=arrays["item_table"],
            domain_table=arrays["domain_table"],
            events={k.removeprefix("event_"): v for k, v in arrays.items() if k.startswith("event_")},
            samples={k.removeprefix("sample_"): v for k, v in arrays.items() if k.startswith("sample_")},
            split=Split.from_arrays(arrays),
            meta=json.loads((directory / "meta.json").read_text()),
            embedding_maps={k.removeprefix("embmap_"): v for k, v in arrays.items() if k.startswith("embmap_")},
        )


# --------------------------------------------------------------------------------------------------
# The sample-builder core: shared by the in-memory `prepare` and the out-of-core `dacdr.data.streaming`
# --------------------------------------------------------------------------------------------------


def vocabularies(static: CrossDomainData, users: pl.Series, ratings: pl.Series | None = None) -> Vocabularies:
    """Vocabularies of every field: items, features and domains from the static tables; `users` (and, for a
    rating task, `ratings`: labels rounded to Int64) from the interactions — any series holding each value."""
    spec = static.spec
    vocabs: dict[str, Vocab] = {
        "item": Vocab.from_series(static.items["item"]),
        "behaviour": Vocab(list(spec.behaviour_types)),
        "domain": Vocab(spec.domains),
        "user": Vocab.from_series(users),
    }
    for f in spec.item_features:
        vocabs[f] = Vocab.from_series(static.items[f])
    for f in spec.domain_features:
        vocabs[f] = Vocab.from_series(static.domains[f])
    if spec.task == "rating":
        if ratings is None:
            raise ValueError(f"dataset {spec.name!r} is a rating task: its rating vocabulary needs the labels")
        vocabs["rating"] = Vocab.from_series(ratings)
    return Vocabularies(vocabs)


def rating_values(labels: pl.Series) -> pl.Series:
    """The rating tokens of a rating task's labels: rounded to whole stars."""
    return labels.cast(pl.Float64).round(0).cast(pl.Int64)


def build_vocabularies(data: CrossDomainData) -> Vocabularies:
    """`vocabularies` of an in-memory dataset."""
    ratings = rating_values(data.interactions["label"]) if data.spec.task == "rating" else None
    return vocabularies(data, data.interactions["user"], ratings)


@dataclass
class TokenTables:
    """What every sample of a dataset shares: the feature spec and the token rows of each item and domain."""

    spec: FeatureSpec
    item_table: np.ndarray
    """[item vocab size, len(item_fields)]"""
    domain_table: np.ndarray
    """[domain vocab size, len(domain_fields)]"""
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    """per limited field: vocab index -> embedding row (`limit_embeddings`)"""


def token_tables(static: CrossDomainData, vocabs: Vocabularies, max_len: int) -> TokenTables:
    """The feature spec and the item / domain token tables of a dataset (from its static tables)."""
    spec = static.spec
    item_fields = ["item", *spec.item_features]
    fspec = FeatureSpec(
        task=spec.task,
        item_fields=item_fields,
        sequence_fields=[*item_fields, "behaviour"] + (["rating"] if spec.task == "rating" else []),
        domain_fields=["domain", *spec.domain_features],
        vocab_sizes={k: v for k, v in vocabs.sizes().items() if k != "user"},
        max_len=max_len,
        source_domain=spec.source_domain,
        target_domains=list(spec.target_domains),
        label_range=tuple(spec.label_range),
    )
    # An item shown in several domains keeps the features of its first listing.
    items = static.items.unique(subset="item", keep="first", maintain_order=True)
    item_table = np.zeros((len(vocabs["item"]), len(fspec.item_fields)), dtype=np.int64)
    rows = vocabs["item"].encode(items["item"])
    for j, f in enumerate(fspec.item_fields):
        item_table[rows, j] = vocabs[f].encode(items[f])
    item_table[OOV] = OOV  # OOV item: OOV features
    domain_table = np.zeros((len(vocabs["domain"]), len(fspec.domain_fields)), dtype=np.int64)
    rows = vocabs["domain"].encode(static.domains["domain"])
    for j, f in enumerate(fspec.domain_fields):
        domain_table[rows, j] = vocabs[f].encode(static.domains[f])
    domain_table[OOV] = OOV
    return TokenTables(fspec, item_table, domain_table)


def encode_rows(interactions: pl.DataFrame, vocabs: Vocabularies, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """Validated interaction rows -> integer arrays: user, domain, item, behaviour (vocab indices), label,
    timestamp, the reference columns present, `is_source`, and `rating` (rating tokens) for a rating task."""
    rows = {
        "user": vocabs["user"].encode(interactions["user"]),
        "domain": vocabs["domain"].encode(interactions["domain"]),
        "item": vocabs["item"].encode(interactions["item"]),
        "behaviour": vocabs["behaviour"].encode(interactions["behaviour"]),
        "label": interactions["label"].to_numpy().astype(np.float32),
        "timestamp": interactions["timestamp"].to_numpy().astype(np.int64),
    }
    for col in (c for c in REFERENCE_COLUMNS if c in interactions.columns):
        rows[col] = interactions[col].fill_null(np.nan).to_numpy().astype(np.float32)
    rows["is_source"] = rows["domain"] == vocabs["domain"].lookup(spec.source_domain)
    if spec.task == "rating":
        rows["rating"] = vocabs["rating"].encode(rating_values(interactions["label"]))
    return rows


def counted_fields(rows: dict[str, np.ndarray], vocabs: Vocabularies, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """Occurrences per vocab index of `item`, `domain`, `behaviour` (and `rating`) among the rows before the
    dataset's `test_start` (all rows without one): what the frequency limits count; sums over blocks."""
    counted = rows["timestamp"] < spec.test_start if spec.test_start is not None else slice(None)
    fields = ["item", "domain", "behaviour", *(["rating"] if "rating" in rows else [])]
    return {f: np.bincount(rows[f][counted], minlength=len(vocabs[f])) for f in fields}


def field_counts(
    base: dict[str, np.ndarray], item_table: np.ndarray, domain_table: np.ndarray, spec: FeatureSpec
) -> dict[str, np.ndarray]:
    """Occurrences per vocab index of every embedded field, from per-index counts of `item`, `domain`,
    `behaviour` (and `rating`): a side feature counts the rows of the items (domains) that carry it."""
    counts: dict[str, np.ndarray] = {}
    for table, key, fields in ((item_table, "item", spec.item_fields), (domain_table, "domain", spec.domain_fields)):
        rows = np.zeros(len(table), dtype=np.float64)
        rows[: len(base[key])] = base[key][: len(table)]
        for j, f in enumerate(fields):
            counts[f] = rows if j == 0 else np.bincount(table[:, j], weights=rows, minlength=spec.vocab_sizes[f])
    for f in ("behaviour", "rating"):
        if f in base:
            counts[f] = base[f]
    return counts


def limit_embeddings(
    tables: TokenTables, vocabs: Vocabularies, base: dict[str, np.ndarray],
    min_count: dict[str, int] | None, hash_buckets: dict[str, int] | None,
) -> None:
    """Bound the embedding tables of the fields named in `min_count` / `hash_buckets`
    (`features.embedding_maps`): rewrites the item / domain tables in place and sets `tables.maps` and the
    spec's table sizes. `base`: `counted_fields` of the whole dataset."""
    if not (min_count or hash_buckets):
        return
    fspec = tables.spec
    counts = field_counts(base, tables.item_table, tables.domain_table, fspec)
    tables.maps = embedding_maps(vocabs, fspec.fields, counts, min_count, hash_buckets)
    for table, fields in ((tables.item_table, fspec.item_fields), (tables.domain_table, fspec.domain_fields)):
        for j, f in enumerate(fields):
            if f in tables.maps:
                table[:, j] = tables.maps[f][table[:, j]]
    tables.spec = fspec.model_copy(update={"vocab_sizes": table_rows(tables.maps, fspec.vocab_sizes)})


def source_events(rows: dict[str, np.ndarray], tables: TokenTables) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The source rows as behaviour events, sorted by (user, time) — ties keep row order, so sequences are
    reproducible — and their token column per sequence field (limits applied). Returns (row order, columns)."""
    ev_rows = np.flatnonzero(rows["is_source"])
    order = ev_rows[np.lexsort((rows["timestamp"][ev_rows], rows["user"][ev_rows]))]
    fspec, maps = tables.spec, tables.maps
    columns = {f: tables.item_table[rows["item"][order], j] for j, f in enumerate(fspec.item_fields)}
    for f in fspec.sequence_fields[len(fspec.item_fields):]:  # behaviour (and rating)
        col = rows[f][order]
        columns[f] = maps[f][col] if f in maps else col
    return order, columns


def sequence_ranges(
    event_user: np.ndarray, event_ts: np.ndarray, sample_user: np.ndarray, sample_ts: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each sample, the range [start, end) of its user's events strictly before its timestamp.

    `event_user`/`event_ts` must be sorted by (user, timestamp). Vectorised with one searchsorted over a
    combined (user, time) key.
    """
    t0 = min(int(event_ts.min(initial=0)), int(sample_ts.min(initial=0)))
    t_span = max(int(event_ts.max(initial=0)), int(sample_ts.max(initial=0))) - t0 + 1
    n_users = int(max(event_user.max(initial=0), sample_user.max(initial=0))) + 1
    if n_users * t_span >= 2**62:
        raise OverflowError("user count x time span too large for a 64-bit sequence key")
    ev_key = event_user.astype(np.int64) * t_span + (event_ts - t0)
    end = np.searchsorted(ev_key, sample_user.astype(np.int64) * t_span + (sample_ts - t0), side="left")
    user_start = np.searchsorted(ev_key, sample_user.astype(np.int64) * t_span, side="left")
    start = np.maximum(user_start, end - max_len)
    return start.astype(np.int64), end.astype(np.int64)


def split_rows(
    rows: dict[str, np.ndarray], spec: DatasetSpec, protocol: str, valid_share: float, cold_start_share: float,
    source_sample_rate: float, seed: int, row_ids: np.ndarray | None = None,
) -> Split:
    """The split of `rows` under `protocol`. `row_ids`: the rows' global numbers when `rows` is one block of
    a larger dataset (the time split's rules are per (user, domain) or per global row: exact block by block)."""
    if protocol == "time":
        if spec.test_start is None:
            raise ValueError(f"dataset {spec.name!r} has no test_start: use protocol 'users'")
        return time_split(rows["user"], rows["domain"], rows["timestamp"], rows["is_source"], spec.test_start,
                          valid_share, source_sample_rate, seed, row_ids=row_ids)
    if row_ids is not None:
        raise ValueError(f"protocol {protocol!r} needs the whole dataset at once; only 'time' splits block by block")
    if protocol == "users":
        return user_split(rows["user"], rows["domain"], rows["is_source"], cold_start_share, valid_share,
                          source_sample_rate, seed)
    if protocol == "periods":  # a published split written as clock periods (e.g. CDRIB)
        valid_start = (spec.generator or {}).get("valid_start")
        if spec.test_start is None or valid_start is None:
            raise ValueError(f"dataset {spec.name!r}: protocol 'periods' needs test_start and generator.valid_start")
        return period_split(rows["timestamp"], rows["is_source"], int(valid_start), spec.test_start,
                            source_sample_rate, seed)
    raise ValueError(f"unknown protocol {protocol!r}: expected 'time', 'users' or 'periods'")


# --------------------------------------------------------------------------------------------------
# In memory
# --------------------------------------------------------------------------------------------------


def prepare(
    data: CrossDomainData,
    max_len: int = 50,
    protocol: str = "time",
    valid_share: float = 0.1,
    cold_start_share: float = 0.2,
    source_sample_rate: float = 1.0,
    seed: int = 0,
    min_count: dict[str, int] | None = None,
    hash_buckets: dict[str, int] | None = None,
    sequence_cutoff: str = "before",
) -> PreparedData:
    """Build vocabularies, token tables, sequence ranges and the split. No Python loop per sample.

    `min_count` / `hash_buckets` bound the embedding tables of the named fields (`features.embedding_maps`);
    frequencies are counted over the rows before the dataset's `test_start` (all rows without one).
    `sequence_cutoff`: 'before' (leak-free, default) keeps only source behaviours strictly before each
    sample; 'all' keeps the user's whole source history (the PTUPCDR code's behaviour).
    `protocol` 'periods' takes a published split written as clock periods (`generator.valid_start`,
    `test_start`; see `dacdr.data.loaders.cdrib`).
    """
    if sequence_cutoff not in ("before", "all"):
        raise ValueError(f"unknown sequence_cutoff {sequence_cutoff!r}: expected 'before' or 'all'")
    spec = data.spec
    vocabs = build_vocabularies(data)
    tables = token_tables(data, vocabs, max_len)
    samples = encode_rows(data.interactions, vocabs, spec)
    limit_embeddings(tables, vocabs, counted_fields(samples, vocabs, spec), min_count, hash_buckets)
    order, columns = source_events(samples, tables)
    samples.pop("rating", None)  # in the events' tokens; not a sample field
    events = {"user": samples["user"][order], "timestamp": samples["timestamp"][order], **columns}

    if sequence_cutoff == "before":  # leak-free: only behaviours strictly before each sample
        seq_ts = samples["timestamp"]
    else:  # PTUPCDR-compatible: the user's whole source history
        seq_ts = np.full_like(samples["timestamp"], int(events["timestamp"].max(initial=0)) + 1)
    samples["seq_start"], samples["seq_end"] = sequence_ranges(
        events["user"], events["timestamp"], samples["user"], seq_ts, max_len
    )
    split = split_rows(samples, spec, protocol, valid_share, cold_start_share, source_sample_rate, seed)
    return PreparedData(
        spec=tables.spec,
        vocabs=vocabs,
        item_table=tables.item_table,
        domain_table=tables.domain_table,
        events=events,
        samples=samples,
        split=split,
        meta={"dataset": spec.name, "task": spec.task, "protocol": protocol, "seed": seed},
        embedding_maps=tables.maps,
    )


def build(path: str | Path, data: DataConfig) -> PreparedData:
    """`prepare` of the dataset at `path` with the options of a validated config section."""
    from dacdr.data.dataset import load_dataset

    return prepare(
        load_dataset(path), max_len=data.max_len, protocol=data.protocol, valid_share=data.valid_share,
        cold_start_share=data.cold_start_share, source_sample_rate=data.source_sample_rate, seed=data.split_seed,
        min_count=data.min_count, hash_buckets=data.hash_buckets, sequence_cutoff=data.sequence_cutoff,
    )


__all__ = ["PAD", "PreparedData", "build", "prepare", "sequence_ranges"]
