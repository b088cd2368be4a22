"""Feature description: the one source of truth for vocabularies, model inputs and fine-tuning policy.

Every categorical field (item id, category, brand, behaviour type, rating value, domain id, domain
features) gets a vocabulary mapping raw values to contiguous indices. Index 0 is padding, index 1 is the
out-of-vocabulary row; real values start at 2, so a padded slot can never collide with a real item.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

PAD = 0
OOV = 1
FIRST_ID = 2


class Vocab:
    """Raw value -> index for one field. Values are kept as strings so int and str ids share one format."""

    def __init__(self, values: list[str]):
        self.values = list(values)
        self.index = {v: i + FIRST_ID for i, v in enumerate(self.values)}
        if len(self.index) != len(self.values):
            raise ValueError("vocabulary values must be unique")
        self._mapping: pl.DataFrame | None = None  # the join table of `encode`, built on first use

    def __len__(self) -> int:
        """Size of the embedding table: real values plus padding and OOV."""
        return len(self.values) + FIRST_ID

    @classmethod
    def from_series(cls, s: pl.Series) -> Vocab:
        uniq = s.cast(pl.String).unique().drop_nulls().sort()
        return cls(uniq.to_list())

    def extend(self, values: list[str]) -> list[str]:
        """Add unseen values at the end (existing indices never move); returns the added values."""
        added = [v for v in dict.fromkeys(values) if v not in self.index]
        for v in added:
            self.index[v] = len(self.values) + FIRST_ID
            self.values.append(v)
        if added:
            self._mapping = None
        return added

    def encode(self, s: pl.Series) -> np.ndarray:
        """Vectorised lookup; unknown values map to OOV."""
        if self._mapping is None:  # built once: an out-of-core pass encodes thousands of blocks
            self._mapping = pl.DataFrame(
                {"key": self.values, "idx": np.arange(FIRST_ID, len(self), dtype=np.int64)},
                schema={"key": pl.String, "idx": pl.Int64},
            )
        frame = pl.DataFrame({"key": s.cast(pl.String)})
        out = frame.join(self._mapping, on="key", how="left", maintain_order="left")["idx"].fill_null(OOV)
        return out.to_numpy().astype(np.int64)

    def lookup(self, value: object) -> int:
        return self.index.get(str(value), OOV)


class FeatureSpec(BaseModel):
    """Which fields make each model input, and the vocabulary size of every field."""

    model_config = ConfigDict(extra="forbid")

    task: str
    item_fields: list[str]
    """candidate-item tokens E_i, one per field (item id first)"""
    sequence_fields: list[str]
    """fields summed into one source-sequence token (item fields + behaviour [+ rating])"""
    domain_fields: list[str]
    """domain tokens E_d, one per field (domain id first)"""
    vocab_sizes: dict[str, int]
    max_len: int
    source_domain: str
    target_domains: list[str]
    label_range: tuple[float, float]

    @property
    def fields(self) -> list[str]:
        return list(dict.fromkeys(self.sequence_fields + self.item_fields + self.domain_fields))


class Vocabularies:
    """All field vocabularies of a dataset, saved as one JSON file beside a model."""

    def __init__(self, vocabs: dict[str, Vocab]):
        self.vocabs = vocabs

    def __getitem__(self, field: str) -> Vocab:
        return self.vocabs[field]

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.vocabs.items()}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({k: v.values for k, v in self.vocabs.items()}))

    @classmethod
    def load(cls, path: str | Path) -> Vocabularies:
        raw = json.loads(Path(path).read_text())
        return cls({k: Vocab(v) for k, v in raw.items()})


# ---------------------------------------------------------------------------------------------------
# Bounded embedding tables: a vocabulary still maps every raw value to its own index (item rows keep
# their side features), and an *embedding map* compresses those indices into the rows of the table.
# ---------------------------------------------------------------------------------------------------


def frequency_map(counts: np.ndarray, min_count: int) -> np.ndarray:
    """Vocab index -> embedding row keeping only values seen at least `min_count` times.

    `counts[i]` is how often vocab index `i` occurs. PAD stays 0; rare values (and OOV) share row 1, so a
    value seen once in training costs no row of its own; kept values get rows 2.. in vocabulary order.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    keep = np.asarray(counts) >= min_count
    keep[:FIRST_ID] = False
    out = np.full(len(keep), OOV, dtype=np.int64)
    out[PAD] = PAD
    out[keep] = np.arange(FIRST_ID, FIRST_ID + int(keep.sum()), dtype=np.int64)
    return out


def stable_hash(values: list[str], buckets: int) -> np.ndarray:
    """Bucket of each string, the same on every machine and Python run (blake2b, not the salted `hash`)."""
    import hashlib

    if buckets < 1:
        raise ValueError(f"hash buckets must be >= 1, got {buckets}")
    digests = (hashlib.blake2b(v.encode("utf-8"), digest_size=8).digest() for v in values)
    return np.fromiter((int.from_bytes(d, "little") % buckets for d in digests), dtype=np.int64, count=len(values))


def hash_map(vocab: Vocab, buckets: int) -> np.ndarray:
    """Vocab index -> embedding row `FIRST_ID + hash(value) % buckets`; PAD and OOV keep rows 0 and 1."""
    out = np.empty(len(vocab), dtype=np.int64)
    out[PAD], out[OOV] = PAD, OOV
    out[FIRST_ID:] = FIRST_ID + stable_hash(vocab.values, buckets)
    return out


def embedding_maps(
    vocabs: Vocabularies,
    fields: list[str],
    counts: dict[str, np.ndarray],
    min_count: dict[str, int] | None = None,
    hash_buckets: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """The embedding map of every field with a limit; fields without one are absent (identity).

    `counts[field]` holds occurrences per vocab index (needed for `min_count` only). A field may have a
    frequency threshold or a hash, not both; a field that has no embedding table is an error.
    """
    min_count, hash_buckets = min_count or {}, hash_buckets or {}
    for option, limits in (("min_count", min_count), ("hash_buckets", hash_buckets)):
        unknown = sorted(set(limits) - set(fields))
        if unknown:
            raise ValueError(f"data.{option}: unknown field(s) {unknown}; fields with embeddings: {', '.join(fields)}")
    both = sorted(set(min_count) & set(hash_buckets))
    if both:
        raise ValueError(f"data.min_count and data.hash_buckets both set for {both}; choose one per field")
    maps = {f: frequency_map(counts[f], n) for f, n in min_count.items()}
    maps |= {f: hash_map(vocabs[f], n) for f, n in hash_buckets.items()}
    return maps


def table_rows(maps: dict[str, np.ndarray], vocab_sizes: dict[str, int]) -> dict[str, int]:
    """Embedding rows per field once the maps are applied (PAD and OOV included)."""
    return {f: (int(maps[f].max()) + 1 if f in maps else n) for f, n in vocab_sizes.items()}
