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
        return added

    def encode(self, s: pl.Series) -> np.ndarray:
        """Vectorised lookup; unknown values map to OOV."""
        mapping = pl.DataFrame(
            {"key": self.values, "idx": np.arange(FIRST_ID, len(self), dtype=np.int64)},
            schema={"key": pl.String, "idx": pl.Int64},
        )
        frame = pl.DataFrame({"key": s.cast(pl.String)})
        out = frame.join(mapping, on="key", how="left", maintain_order="left")["idx"].fill_null(OOV)
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
