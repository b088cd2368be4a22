"""Sample builder: turns a validated dataset into training-ready arrays, vectorised and cached.

Each row of the dataset becomes one sample ``(user, domain, item, label, timestamp)``. Its source-domain
behaviour sequence is not copied: the source events are stored once, sorted by (user, time), and a
sample only keeps ``[seq_start, seq_end)``, the range of its user's source events strictly before its
timestamp, at most ``max_len`` long. Batches gather the tokens from that range (`dacdr.data.batches`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from dacdr.config import DataConfig
from dacdr.data.dataset import REFERENCE_COLUMNS, CrossDomainData
from dacdr.data.features import PAD, FeatureSpec, Vocab, Vocabularies, embedding_maps, table_rows
from dacdr.data.splits import Split, period_split, time_split, user_split


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

    @property
    def n_samples(self) -> int:
        return len(self.samples["label"])

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


def build_vocabularies(data: CrossDomainData) -> Vocabularies:
    spec = data.spec
    vocabs: dict[str, Vocab] = {
        "item": Vocab.from_series(data.items["item"]),
        "behaviour": Vocab(list(spec.behaviour_types)),
        "domain": Vocab(spec.domains),
        "user": Vocab.from_series(data.interactions["user"]),
    }
    for f in spec.item_features:
        vocabs[f] = Vocab.from_series(data.items[f])
    for f in spec.domain_features:
        vocabs[f] = Vocab.from_series(data.domains[f])
    if spec.task == "rating":
        vocabs["rating"] = Vocab.from_series(data.interactions["label"].round(0).cast(pl.Int64))
    return Vocabularies(vocabs)


def _feature_spec(data: CrossDomainData, vocabs: Vocabularies, max_len: int) -> FeatureSpec:
    spec = data.spec
    item_fields = ["item", *spec.item_features]
    seq_fields = [*item_fields, "behaviour"] + (["rating"] if spec.task == "rating" else [])
    return FeatureSpec(
        task=spec.task,
        item_fields=item_fields,
        sequence_fields=seq_fields,
        domain_fields=["domain", *spec.domain_features],
        vocab_sizes={k: v for k, v in vocabs.sizes().items() if k != "user"},
        max_len=max_len,
        source_domain=spec.source_domain,
        target_domains=list(spec.target_domains),
        label_range=tuple(spec.label_range),
    )


def _item_table(data: CrossDomainData, vocabs: Vocabularies, fields: list[str]) -> np.ndarray:
    # An item shown in several domains keeps the features of its first listing.
    items = data.items.unique(subset="item", keep="first", maintain_order=True)
    table = np.zeros((len(vocabs["item"]), len(fields)), dtype=np.int64)
    rows = vocabs["item"].encode(items["item"])
    for j, f in enumerate(fields):
        table[rows, j] = vocabs[f].encode(items[f])
    table[1] = [1] * len(fields)  # OOV item: OOV features
    return table


def _domain_table(data: CrossDomainData, vocabs: Vocabularies, fields: list[str]) -> np.ndarray:
    table = np.zeros((len(vocabs["domain"]), len(fields)), dtype=np.int64)
    rows = vocabs["domain"].encode(data.domains["domain"])
    for j, f in enumerate(fields):
        table[rows, j] = vocabs[f].encode(data.domains[f])
    table[1] = [1] * len(fields)
    return table


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


def apply_embedding_maps(
    maps: dict[str, np.ndarray], spec: FeatureSpec, item_table: np.ndarray, domain_table: np.ndarray
) -> FeatureSpec:
    """Rewrite the token columns of the item and domain tables in place; return the spec with table sizes."""
    for table, fields in ((item_table, spec.item_fields), (domain_table, spec.domain_fields)):
        for j, f in enumerate(fields):
            if f in maps:
                table[:, j] = maps[f][table[:, j]]
    return spec.model_copy(update={"vocab_sizes": table_rows(maps, spec.vocab_sizes)})


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
    spec = data.spec
    vocabs = build_vocabularies(data)
    fspec = _feature_spec(data, vocabs, max_len)
    inter = data.interactions
    samples = {
        "user": vocabs["user"].encode(inter["user"]),
        "domain": vocabs["domain"].encode(inter["domain"]),
        "item": vocabs["item"].encode(inter["item"]),
        "behaviour": vocabs["behaviour"].encode(inter["behaviour"]),
        "label": inter["label"].to_numpy().astype(np.float32),
        "timestamp": inter["timestamp"].to_numpy().astype(np.int64),
    }
    for col in (c for c in REFERENCE_COLUMNS if c in inter.columns):
        samples[col] = inter[col].fill_null(np.nan).to_numpy().astype(np.float32)
    source_idx = vocabs["domain"].lookup(spec.source_domain)
    samples["is_source"] = samples["domain"] == source_idx

    # Source events, sorted by (user, time); ties keep file order so sequences are reproducible.
    ev_rows = np.flatnonzero(samples["is_source"])
    order = ev_rows[np.lexsort((samples["timestamp"][ev_rows], samples["user"][ev_rows]))]
    item_table = _item_table(data, vocabs, fspec.item_fields)
    domain_table = _domain_table(data, vocabs, fspec.domain_fields)
    rating = vocabs["rating"].encode(inter["label"].round(0).cast(pl.Int64)) if spec.task == "rating" else None
    maps: dict[str, np.ndarray] = {}
    if min_count or hash_buckets:
        counted = samples["timestamp"] < spec.test_start if spec.test_start is not None else slice(None)
        base = {f: np.bincount(samples[f][counted], minlength=len(vocabs[f])) for f in ("item", "domain", "behaviour")}
        if rating is not None:
            base["rating"] = np.bincount(rating[counted], minlength=len(vocabs["rating"]))
        counts = field_counts(base, item_table, domain_table, fspec)
        maps = embedding_maps(vocabs, fspec.fields, counts, min_count, hash_buckets)
        fspec = apply_embedding_maps(maps, fspec, item_table, domain_table)
    events = {"user": samples["user"][order], "timestamp": samples["timestamp"][order]}
    for j, f in enumerate(fspec.item_fields):
        events[f] = item_table[samples["item"][order], j]
    events["behaviour"] = samples["behaviour"][order]
    if rating is not None:
        events["rating"] = rating[order]
    for f in ("behaviour", "rating"):
        if f in maps:
            events[f] = maps[f][events[f]]

    if sequence_cutoff == "before":  # leak-free: only behaviours strictly before each sample
        seq_ts = samples["timestamp"]
    elif sequence_cutoff == "all":  # PTUPCDR-compatible: the user's whole source history
        seq_ts = np.full_like(samples["timestamp"], int(events["timestamp"].max(initial=0)) + 1)
    else:
        raise ValueError(f"unknown sequence_cutoff {sequence_cutoff!r}: expected 'before' or 'all'")
    samples["seq_start"], samples["seq_end"] = sequence_ranges(
        events["user"], events["timestamp"], samples["user"], seq_ts, max_len
    )

    if protocol == "time":
        if spec.test_start is None:
            raise ValueError(f"dataset {spec.name!r} has no test_start: use protocol 'users'")
        split = time_split(
            samples["user"], samples["domain"], samples["timestamp"], samples["is_source"],
            spec.test_start, valid_share, source_sample_rate, seed,
        )
    elif protocol == "users":
        split = user_split(
            samples["user"], samples["domain"], samples["is_source"],
            cold_start_share, valid_share, source_sample_rate, seed,
        )
    elif protocol == "periods":  # a published split written as clock periods (e.g. CDRIB)
        valid_start = (spec.generator or {}).get("valid_start")
        if spec.test_start is None or valid_start is None:
            raise ValueError(f"dataset {spec.name!r}: protocol 'periods' needs test_start and generator.valid_start")
        split = period_split(
            samples["timestamp"], samples["is_source"], int(valid_start), spec.test_start, source_sample_rate, seed
        )
    else:
        raise ValueError(f"unknown protocol {protocol!r}: expected 'time', 'users' or 'periods'")

    return PreparedData(
        spec=fspec,
        vocabs=vocabs,
        item_table=item_table,
        domain_table=domain_table,
        events=events,
        samples=samples,
        split=split,
        meta={"dataset": spec.name, "task": spec.task, "protocol": protocol, "seed": seed},
        embedding_maps=maps,
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
