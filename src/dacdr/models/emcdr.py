"""EMCDR (Man et al., "Cross-Domain Recommendation: An Embedding and Mapping Approach", IJCAI 2017).

Three stages, expressed as trainer phases (`phases()`):

1. **source**: matrix factorisation on source-domain samples (source user and item embeddings);
2. **target**: matrix factorisation on target-domain samples (a target user embedding per target domain,
   target item embeddings);
3. **bridge**: an MLP per target domain (EMCDR-MLP: one tanh hidden layer) maps a user's source embedding to
   her target embedding, fitted by mean squared error on the *overlapping* users (users with both source
   and target training rows), one row per (user, target).

A cold-start user has no target embedding, so at inference every user is scored with her mapped source
embedding `f_t(u_s)` against the target item embeddings (also for warm users: validation users are
cold in their target by construction, and one path keeps the evaluation of cold and warm users alike).

Adaptations to click logs: the MF of stages 1–2 is logistic (binary cross-entropy on clicks / the task
loss) instead of squared loss on ratings, and has item biases and a per-domain bias (biased MF), because
item popularity and domain base rates dominate click data. Inputs: user id and item id only.

The staging pieces (`BridgeModel`, the row selectors) are reused by SSCDR and PTUPCDR.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dacdr.data.features import FIRST_ID, FeatureSpec
from dacdr.models.base import RecModel
from dacdr.models.multidomain import domain_slots, pick
from dacdr.models.phase import Phase
from dacdr.models.registry import register

if TYPE_CHECKING:
    from dacdr.data.samples import PreparedData


# ----------------------------------------------------------------------------------- sample selectors
def users_with_source(prepared: PreparedData) -> np.ndarray:
    """Users with source-domain training rows: those whose source embedding is learnt."""
    return np.unique(prepared.samples["user"][prepared.split.train_source])


def overlapping_rows(prepared: PreparedData, idx: np.ndarray) -> np.ndarray:
    """Target rows of `idx` whose user also has source training rows; source rows are kept."""
    s = prepared.samples
    return idx[s["is_source"][idx] | np.isin(s["user"][idx], users_with_source(prepared))]


def last_row_per_user_domain(prepared: PreparedData, idx: np.ndarray) -> np.ndarray:
    """One row per (user, domain): the latest, whose source sequence is the longest."""
    s = prepared.samples
    order = idx[np.lexsort((s["timestamp"][idx], s["domain"][idx], s["user"][idx]))]
    key = s["user"][order].astype(np.int64) * 1024 + s["domain"][order]
    last = np.r_[key[1:] != key[:-1], True]
    return np.sort(order[last])


def overlapping_users_once(prepared: PreparedData, idx: np.ndarray) -> np.ndarray:
    return last_row_per_user_domain(prepared, overlapping_rows(prepared, idx))


def name_starts(*prefixes: str) -> Callable[[str], bool]:
    return lambda name: name.startswith(prefixes)


# ----------------------------------------------------------------------------------- shared structure
class BridgeModel(RecModel):
    """Id-embedding model with a source space, a per-target target space and a learnt bridge between them.

    Subclasses implement `map_user` (the transferred target embedding of a user) and may override `match`
    (how a user and an item embedding make a score: a dot product here).
    """

    inputs = ("seq", "seq_mask", "item", "domain", "user")

    def __init__(self, spec: FeatureSpec, n_users: int | None, dim: int, **params):
        if not n_users or n_users < FIRST_ID:
            raise ValueError(
                f"{type(self).__name__} needs n_users, the size of the user vocabulary "
                "(len(prepared.vocabs['user'])); got " + repr(n_users)
            )
        super().__init__(spec, n_users=n_users, dim=dim, **params)
        if spec.item_fields[0] != "item" or spec.sequence_fields[0] != "item":
            raise ValueError("id-based models need 'item' as the first item and sequence field")
        self.phase: str | None = None
        self.dim, self.n_users = dim, n_users
        self.n_targets = len(spec.target_domains)
        n_items = spec.vocab_sizes["item"]
        self.source_user = nn.Embedding(n_users, dim)
        self.source_item = nn.Embedding(n_items, dim, padding_idx=0)
        self.source_item_bias = nn.Embedding(n_items, 1, padding_idx=0)
        # One target space per target domain: user u in target t is row u * n_targets + t.
        self.target_user = nn.Embedding(n_users * self.n_targets, dim)
        self.target_item = nn.Embedding(n_items, dim, padding_idx=0)
        self.target_item_bias = nn.Embedding(n_items, 1, padding_idx=0)
        self.domain_bias = nn.Embedding(spec.vocab_sizes["domain"], 1)
        self.out = nn.Linear(1, 1)
        for table in (self.source_user, self.source_item, self.target_user, self.target_item):
            nn.init.normal_(table.weight, std=0.05)
        for table in (self.source_item_bias, self.target_item_bias, self.domain_bias):
            nn.init.zeros_(table.weight)
        with torch.no_grad():
            self.out.weight.fill_(1.0)
            for table in (self.source_item, self.target_item):
                table.weight[0].zero_()

    def set_phase(self, phase: str | None) -> None:
        """Called by the trainer; only the *training* forward of the pre-training phases depends on it."""
        self.phase = phase

    def output_layer(self) -> nn.Linear:
        return self.out

    def target_slot(self, domain: torch.Tensor) -> torch.Tensor:
        return domain_slots(domain, self.n_targets, offset=1)

    def target_user_of(self, user: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        return self.target_user(user * self.n_targets + slot)

    def match(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return (u * i).sum(-1)

    def score_pair(self, u: torch.Tensor, item_id: torch.Tensor, domain: torch.Tensor, source: bool) -> torch.Tensor:
        items, bias = (self.source_item, self.source_item_bias) if source else (self.target_item, self.target_item_bias)
        z = self.match(u, items(item_id)) + bias(item_id).squeeze(1) + self.domain_bias(domain[:, 0]).squeeze(1)
        return self.out(z.unsqueeze(1)).squeeze(1)

    def map_user(
        self, user: torch.Tensor, slot: torch.Tensor, seq: torch.Tensor, seq_mask: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        seq: torch.Tensor,
        seq_mask: torch.Tensor,
        item: torch.Tensor,
        domain: torch.Tensor,
        user: torch.Tensor,
    ) -> torch.Tensor:
        item_id = item[:, 0]
        if self.training and self.phase == "source":
            return self.score_pair(self.source_user(user), item_id, domain, source=True)
        slot = self.target_slot(domain)
        if self.training and self.phase == "target":
            return self.score_pair(self.target_user_of(user, slot), item_id, domain, source=False)
        return self.score_pair(self.map_user(user, slot, seq, seq_mask), item_id, domain, source=False)

    def pretraining_phases(self) -> list[Phase]:
        """Stages 1 and 2: factorise each domain on its own (no validation: it scores the bridge)."""

        shared = ("domain_bias", "out.")
        return [
            Phase("source", "source", trainable=name_starts("source_", *shared), early_stopping=False),
            Phase("target", "targets", trainable=name_starts("target_", *shared), early_stopping=False),
        ]


def tanh_mlp(dim: int, hidden: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    sizes = [dim, *hidden, dim]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


@register("EMCDR", family="id-bridge", order=50)
class EMCDR(BridgeModel):
    def __init__(self, spec: FeatureSpec, n_users: int | None = None, dim: int = 32,
                 bridge_hidden: tuple[int, ...] = (64,)):
        super().__init__(spec, n_users, dim, bridge_hidden=list(bridge_hidden))
        self.bridges = nn.ModuleList(tanh_mlp(dim, list(bridge_hidden)) for _ in range(self.n_targets))

    def bridge(self, source_emb: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        return pick(torch.stack([b(source_emb) for b in self.bridges], dim=1), slot)

    def map_user(self, user, slot, seq, seq_mask):
        return self.bridge(self.source_user(user), slot)

    def bridge_loss(self, model: RecModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stage 3: || f_t(u_s) - u_t ||² on overlapping users; both embeddings are frozen here."""
        slot = self.target_slot(batch["domain"])
        with torch.no_grad():
            source, target = self.source_user(batch["user"]), self.target_user_of(batch["user"], slot)
        return F.mse_loss(self.bridge(source, slot), target)

    def phases(self) -> list[Phase]:

        return [*self.pretraining_phases(),
                Phase("bridge", "targets", select=overlapping_users_once, loss=self.bridge_loss,
                      trainable=name_starts("bridges."))]
