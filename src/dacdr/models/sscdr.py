"""SSCDR (Kang et al., "Semi-Supervised Learning for Cross-Domain Recommendation to Cold-Start Users",
CIKM 2019).

1. **source** / **target**: metric learning in each domain: users and items live in one Euclidean space
   (embeddings kept inside the unit ball, as in CML) and a user's score for an item falls with their
   squared distance.
2. **bridge**: an MLP per target domain (tanh) maps the source space to the target space, trained
   semi-supervised: the supervised loss `|| f(u_s) − u_t ||²` on overlapping users, plus λ times an
   unsupervised loss on the source interactions of *all* source users that keeps the mapped user close to
   her mapped source items: `[m + d(f(u_s), f(i_s)) − d(f(u_s), f(j_s))]₊` with `i` an item of her source
   history and `j` an item of another user's (an in-batch negative).
3. **inference** (multi-hop neighbourhood inference, one hop): a cold-start user's target embedding is the
   average of her mapped embedding and the mean mapped embedding of the items of her source history.

Adaptations to click logs: stages 1–2 fit the distances with the task loss on explicit exposures (logistic
on clicks: `logit = a·(−d²) + b_item + b_domain + c`) instead of a hinge loss on sampled negatives, because
click logs record what was shown and not clicked; item and domain biases model popularity and base rates.
The history of step 3 is the source sequence before the scored impression (no leakage). Inputs: user id,
item id, and the item ids of the source sequence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from dacdr.data.features import FIRST_ID, FeatureSpec
from dacdr.models.base import RecModel
from dacdr.models.emcdr import BridgeModel, last_row_per_user_domain, name_starts, overlapping_rows, tanh_mlp
from dacdr.models.layers import masked_mean
from dacdr.models.multidomain import pick
from dacdr.models.phase import Phase
from dacdr.models.registry import register

if TYPE_CHECKING:
    from dacdr.data.samples import PreparedData


def unit_ball(x: torch.Tensor) -> torch.Tensor:
    """Scale embeddings longer than 1 back onto the unit sphere (CML's norm constraint)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1.0)


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum(-1)


def source_users_and_overlap(prepared: PreparedData, idx):
    """The bridge phase's rows: one per (user, domain) — every source user once (unsupervised loss) and
    every overlapping user once per target (supervised loss)."""
    return last_row_per_user_domain(prepared, overlapping_rows(prepared, idx))


@register("SSCDR", family="id-bridge", order=40)
class SSCDR(BridgeModel):
    def __init__(self, spec: FeatureSpec, n_users: int | None = None, dim: int = 32,
                 bridge_hidden: tuple[int, ...] = (64,), margin: float = 0.5, unsup_weight: float = 0.5):
        super().__init__(spec, n_users, dim, bridge_hidden=list(bridge_hidden), margin=margin,
                         unsup_weight=unsup_weight)
        self.margin, self.unsup_weight = margin, unsup_weight
        self.bridges = nn.ModuleList(tanh_mlp(dim, list(bridge_hidden)) for _ in range(self.n_targets))

    def match(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return -sq_dist(unit_ball(u), unit_ball(i))

    def bridge(self, source_emb: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """[B, ..., k] -> mapped by each sample's target bridge."""
        mapped = torch.stack([b(unit_ball(source_emb)) for b in self.bridges], dim=1)
        return pick(mapped, slot)

    def map_user(self, user, slot, seq, seq_mask):
        mapped_user = self.bridge(self.source_user(user), slot)
        mapped_items = self.bridge(self.source_item(seq[..., 0]), slot)  # [B, L, k]
        neighbours = masked_mean(mapped_items, seq_mask)
        has_history = seq_mask.any(1, keepdim=True)
        return torch.where(has_history, (mapped_user + neighbours) / 2, mapped_user)

    def bridge_loss(self, model: RecModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        user, domain, seq, mask = batch["user"], batch["domain"], batch["seq"], batch["seq_mask"]
        is_source = domain[:, 0] == FIRST_ID  # the source is the first domain of the vocabulary
        loss = torch.zeros((), dtype=torch.float32)
        with torch.no_grad():
            source_user = self.source_user(user)
        target_rows = ~is_source
        if target_rows.any():
            slot = self.target_slot(domain[target_rows])
            with torch.no_grad():
                target = self.target_user_of(user[target_rows], slot)
            loss = loss + F.mse_loss(self.bridge(source_user[target_rows], slot), target)
        if is_source.any() and self.unsup_weight > 0:
            rows = is_source.nonzero().squeeze(1)
            with torch.no_grad():
                pos = self.source_item(seq[rows][..., 0])  # [b, L, k] her source items
                neg = pos.roll(1, dims=0)  # another user's items
            pos_mask, neg_mask = mask[rows], mask[rows].roll(1, dims=0)
            valid = (pos_mask & neg_mask).float()
            hinge = torch.zeros((), dtype=torch.float32)
            for b in self.bridges:  # the unsupervised loss shapes every target's mapping
                u = b(unit_ball(source_user[rows])).unsqueeze(1)
                d_pos, d_neg = sq_dist(u, b(unit_ball(pos))), sq_dist(u, b(unit_ball(neg)))
                hinge = hinge + (F.relu(self.margin + d_pos - d_neg) * valid).sum() / valid.sum().clamp_min(1.0)
            loss = loss + self.unsup_weight * hinge / len(self.bridges)
        return loss

    def phases(self) -> list[Phase]:

        return [*self.pretraining_phases(),
                Phase("bridge", "source+targets", select=source_users_and_overlap, loss=self.bridge_loss,
                      trainable=name_starts("bridges."))]
