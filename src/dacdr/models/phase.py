"""Staged training: a model that trains in stages says so with a list of `Phase`s (`RecModel.phases()`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from dacdr.data.batches import Batch
    from dacdr.data.samples import PreparedData
    from dacdr.models.base import RecModel


@dataclass
class Phase:
    """One stage of training: which samples, which parameters, how many epochs.

    Single-stage models use one phase; staged models (pre-train, bridge, meta-learn) return several from
    `RecModel.phases()`, and the trainer runs them in order. Before a phase starts the trainer calls
    `model.set_phase(name)` when the model has it (and `set_phase(None)` after the last phase), so a model
    may route its *training* forward by phase; evaluation always scores the model as deployed.
    """

    name: str
    train_on: str = "targets"
    epochs: int | None = None
    trainable: Callable[[str], bool] | None = None
    """parameter name -> trained in this phase; None trains all"""
    early_stopping: bool = True
    select: Callable[[PreparedData, np.ndarray], np.ndarray] | None = None
    """narrows the `train_on` sample indices, e.g. to one row per overlapping user (bridge phases)"""
    loss: Callable[[RecModel, Batch], torch.Tensor] | None = None
    """replaces the task loss (BCE / MSE on labels), e.g. the MSE between mapped and target embeddings"""
    lr: float | None = None
    """learning rate of this phase; None: the config's"""
    batch_size: int | None = None
    """training batch size of this phase; None: the config's"""
    history: bool = True
    """False: this phase's training forward reads no source history, so its batches may leave it out"""
