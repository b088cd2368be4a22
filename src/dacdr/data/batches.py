"""Model inputs, built in one place: `assemble` turns event ranges, item rows and domain rows into a `Batch`.

Training, evaluation and streaming gather from pre-built arrays (`BatchGatherer`, a handful of array gathers
per batch, no per-sample Python); the scoring service packs each request's history with `pack_histories` and
calls the same `assemble`, so padding, alignment, masking and dtypes are defined once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from dacdr.data.samples import PreparedData


Batch = dict[str, torch.Tensor]
"""Model inputs: `seq` [B, L, F] long, `seq_mask` [B, L] bool, `item` [B, n] long, `domain` [B, m] long,
plus `label` [B] float and `user` [B] long for losses and per-user metrics."""


def assemble(
    event_tokens: np.ndarray, seq_start: np.ndarray, seq_end: np.ndarray, length: int,
    item: np.ndarray, domain: np.ndarray, seq_rows: np.ndarray | None = None, **extra: np.ndarray,
) -> dict[str, np.ndarray]:
    """The model inputs of rows whose histories are the event ranges [`seq_start`, `seq_end`), as numpy arrays.

    `event_tokens` [1 + n_events, F]: row 0 is a padding row and event i is row i + 1, so masked positions
    gather zeros without a branch. Each range's last `length` events are right-aligned (most recent last,
    padding first): `seq` [B, length, F] int64 whatever the table's integer type, `seq_mask` [B, length] bool.
    `item` / `domain` are the rows' token rows and `extra` (label, user, ...) is passed through. There may be
    fewer sequence rows than item rows when a model broadcasts one history over several items. `seq_rows`: the
    range of each sequence row when ranges repeat (a request's history on each of its items), so that each
    window is built once. numpy rather than torch: both are zero-copy views of each other on the CPU, and
    numpy's `take` is several times faster than tensor indexing here, for a training batch and a request alike.
    """
    seq_end = np.asarray(seq_end)
    pos = seq_end[:, None] + np.arange(-length, 0, dtype=np.int64)  # [B, L], most recent event last
    mask = pos >= np.asarray(seq_start)[:, None]
    seq = np.take(np.asarray(event_tokens), np.where(mask, pos + 1, 0), axis=0).astype(np.int64, copy=False)
    if seq_rows is not None:
        seq, mask = seq[seq_rows], mask[seq_rows]
    return {"seq": seq, "seq_mask": mask, "item": item, "domain": domain, **extra}


def as_batch(arrays: dict[str, np.ndarray]) -> Batch:
    """`assemble`'s arrays as tensors (zero-copy)."""
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def pack_histories(histories: Sequence[np.ndarray], n_fields: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user token arrays [n_u, F] (oldest first) as one event table for `assemble` and each user's range."""
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    end = np.cumsum(lengths)
    table = np.concatenate([np.zeros((1, n_fields), dtype=np.int64), *histories], dtype=np.int64)
    return table, end - lengths, end


class BatchGatherer:
    """Holds the arrays as tensors and builds batches for any index set."""

    max_len: int
    item_table: torch.Tensor
    domain_table: torch.Tensor
    event_tokens: torch.Tensor
    user: torch.Tensor
    domain: torch.Tensor
    item: torch.Tensor
    label: torch.Tensor
    seq_start: torch.Tensor
    seq_end: torch.Tensor

    def __init__(self, prepared: PreparedData):
        spec = prepared.spec
        events = np.stack([prepared.events[f] for f in spec.sequence_fields], axis=1).astype(np.int64)
        # Row 0 of the event table is a padding row (see `assemble`).
        events = np.concatenate([np.zeros((1, events.shape[1]), dtype=np.int64), events])
        self._hold(prepared.item_table, prepared.domain_table, events, prepared.samples, spec.max_len)

    @classmethod
    def over(
        cls, item_table: np.ndarray, domain_table: np.ndarray, event_tokens: np.ndarray,
        samples: dict[str, np.ndarray], max_len: int,
    ) -> BatchGatherer:
        """A gatherer over any event table whose row 0 is padding (e.g. streaming's memory-mapped int32 one)
        and any sample arrays (user, domain, item, label, seq_start, seq_end)."""
        self = cls.__new__(cls)
        self._hold(item_table, domain_table, event_tokens, samples, max_len)
        return self

    def _hold(
        self, item_table: np.ndarray, domain_table: np.ndarray, event_tokens: np.ndarray,
        samples: dict[str, np.ndarray], max_len: int,
    ) -> None:
        self.max_len = max_len
        self.item_table = torch.from_numpy(item_table)
        self.domain_table = torch.from_numpy(domain_table)
        self.event_tokens = torch.from_numpy(event_tokens)
        for key in ("user", "domain", "item", "label", "seq_start", "seq_end"):
            setattr(self, key, torch.from_numpy(samples[key]))

    def gather(self, idx: torch.Tensor | np.ndarray, max_len: int | None = None) -> Batch:
        """The batch of rows `idx`; `max_len` overrides the history length (0: `seq` [B, 0, F], for a forward
        that reads no history)."""
        # numpy views of the tensors (zero-copy): `assemble` works on arrays
        idx, a = np.asarray(idx, dtype=np.int64), np.asarray
        return as_batch(assemble(
            a(self.event_tokens), a(self.seq_start)[idx], a(self.seq_end)[idx],
            self.max_len if max_len is None else max_len,
            item=a(self.item_table)[a(self.item)[idx]], domain=a(self.domain_table)[a(self.domain)[idx]],
            label=a(self.label)[idx], user=a(self.user)[idx],
        ))

    def iterate(
        self, indices: np.ndarray, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
        max_len: int | None = None,
    ) -> Iterator[Batch]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=generator)]
        for i in range(0, len(idx), batch_size):
            yield self.gather(idx[i : i + batch_size], max_len)
