"""Batches sliced from pre-built arrays: a handful of tensor gathers per batch, no per-sample Python."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from dacdr.data.samples import PreparedData

Batch = dict[str, torch.Tensor]
"""Model inputs: `seq` [B, L, F] long, `seq_mask` [B, L] bool, `item` [B, n] long, `domain` [B, m] long,
plus `label` [B] float and `user` [B] long for losses and per-user metrics."""


class BatchGatherer:
    """Holds the arrays as tensors and builds batches for any index set."""

    def __init__(self, prepared: PreparedData):
        spec = prepared.spec
        self.max_len = spec.max_len
        self.item_table = torch.from_numpy(prepared.item_table)
        self.domain_table = torch.from_numpy(prepared.domain_table)
        self.event_tokens = torch.from_numpy(
            np.stack([prepared.events[f] for f in spec.sequence_fields], axis=1).astype(np.int64)
        )
        # Row 0 of the event table is a padding row, so masked positions gather zeros without a branch.
        self.event_tokens = torch.cat([torch.zeros(1, self.event_tokens.shape[1], dtype=torch.long),
                                       self.event_tokens])
        s = prepared.samples
        self.user = torch.from_numpy(s["user"])
        self.domain = torch.from_numpy(s["domain"])
        self.item = torch.from_numpy(s["item"])
        self.label = torch.from_numpy(s["label"])
        self.seq_start = torch.from_numpy(s["seq_start"])
        self.seq_end = torch.from_numpy(s["seq_end"])
        self.offsets = torch.arange(-self.max_len, 0, dtype=torch.long)

    def gather(self, idx: torch.Tensor | np.ndarray) -> Batch:
        idx = torch.as_tensor(idx, dtype=torch.long)
        end = self.seq_end[idx]
        pos = end.unsqueeze(1) + self.offsets  # [B, L], most recent event last
        mask = pos >= self.seq_start[idx].unsqueeze(1)
        seq = self.event_tokens[torch.where(mask, pos + 1, 0)]
        return {
            "seq": seq,
            "seq_mask": mask,
            "item": self.item_table[self.item[idx]],
            "domain": self.domain_table[self.domain[idx]],
            "label": self.label[idx],
            "user": self.user[idx],
        }

    def iterate(
        self, indices: np.ndarray, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=generator)]
        for i in range(0, len(idx), batch_size):
            yield self.gather(idx[i : i + batch_size])
