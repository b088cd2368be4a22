"""What the trainer, the evaluator and the packager need from prepared data, however it was prepared.

Two kinds implement it: `PreparedData` (everything in memory, `dacdr.data.samples`) and `StreamingData`
(training samples streamed from on-disk shards, `dacdr.data.streaming`). Code above the data layer talks to
this protocol and never asks which kind it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

    from dacdr.data.batches import Batch, BatchGatherer
    from dacdr.data.features import FeatureSpec, Vocabularies
    from dacdr.data.samples import PreparedData
    from dacdr.distributed.context import DistContext


class TrainingSet(Protocol):
    """The training samples of one phase."""

    def __len__(self) -> int: ...

    def epoch(
        self, batch_size: int, generator: torch.Generator, ctx: DistContext, num_workers: int = 0,
        history: bool = True,
    ) -> tuple[int, Iterator[Batch]]:
        """(steps, batches) of this rank for one epoch, shuffled by `generator`; the same number of steps on
        every rank (collectives need it). `history=False`: the caller reads no source history, so the batches
        may leave it out (`seq` [B, 0, F])."""
        ...


class TrainingData(Protocol):
    spec: FeatureSpec
    vocabs: Vocabularies
    item_table: np.ndarray
    domain_table: np.ndarray
    meta: dict
    embedding_maps: dict[str, np.ndarray]

    def training_set(
        self, train_on: str, select: Callable[[PreparedData, np.ndarray], np.ndarray] | None = None
    ) -> TrainingSet:
        """The samples a phase trains on: `train_on` is 'targets', 'source' or 'source+targets'; `select`
        narrows them (in memory only)."""
        ...

    def label_mean(self, train_on: str) -> float:
        """Mean label of those samples (0.5 when there are none): the output bias starts there."""
        ...

    def domain_item_counts(self, field: str) -> np.ndarray | None:
        """[domain vocabulary, `field`'s vocabulary]: per domain, how many of its target training samples have an
        item with each value of the item field `field` (e.g. category); None where the data cannot count them
        in memory. Some models start domain-specific weights from it (DACDR's domain prior)."""
        ...

    def eval_view(self) -> PreparedData:
        """The validation and test samples (with their split), in memory."""
        ...

    def eval_gatherer(self) -> BatchGatherer:
        """The batch builder over `eval_view()`'s samples."""
        ...

    def source_events(self) -> dict[str, np.ndarray]:
        """The source events: `user`, `timestamp` and one token column per sequence field, sorted by
        (user, time)."""
        ...


__all__ = ["TrainingData", "TrainingSet"]
