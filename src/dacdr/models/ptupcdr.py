"""PTUPCDR (Zhu et al., "Personalized Transfer of User Preferences for Cross-domain Recommendation",
WSDM 2022).

1. **source** / **target**: matrix factorisation in each domain (as EMCDR's stages 1–2).
2. **meta**: a meta network turns the user's source history into a *personalised* bridge: a characteristic
   encoder attends over the embeddings of her source items (`a_j = softmax_j(w₂ᵀ ReLU(W₁ e_j))`,
   `p_u = Σ a_j e_j`) and a decoder MLP outputs a `k × k` matrix `W_u`; her target embedding is
   `u_s W_u`. Unlike EMCDR it is trained with the task-oriented loss: the predicted score of `u_s W_u`
   against target items, on the target rows of overlapping users. One decoder per target domain.

Inference uses `u_s W_u` for every user (cold-start users have nothing else).

Adaptations to click logs: logistic MF (task loss on clicks) with item and per-domain biases; the history is
the source sequence before the scored impression, i.e. time-ordered and leakage-free (the original code
reads a per-user list in file order). Inputs: user id, item id and the item ids of the source sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from dacdr.data.features import FeatureSpec
from dacdr.models.emcdr import BridgeModel, name_starts, overlapping_rows
from dacdr.models.layers import _MASKED
from dacdr.models.multidomain import pick
from dacdr.models.phase import Phase
from dacdr.models.registry import register


@register("PTUPCDR", family="id-bridge", order=60)
class PTUPCDR(BridgeModel):
    def __init__(self, spec: FeatureSpec, n_users: int | None = None, dim: int = 32, meta_dim: int = 50):
        super().__init__(spec, n_users, dim, meta_dim=meta_dim)
        self.meta_encoder = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1, bias=False))
        self.meta_decoders = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, meta_dim), nn.ReLU(), nn.Linear(meta_dim, dim * dim))
            for _ in range(self.n_targets)
        )

    def personal_bridge(self, seq: torch.Tensor, seq_mask: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """[B, k, k]: the bridge decoded from the user's source history (zeros in, for an empty history)."""
        history = self.source_item(seq[..., 0])  # [B, L, k]
        logits = self.meta_encoder(history).squeeze(-1).masked_fill(~seq_mask, _MASKED)
        weights = logits.softmax(-1) * seq_mask.to(history.dtype)
        profile = (weights.unsqueeze(-1) * history).sum(1)
        per_target = torch.stack([d(profile) for d in self.meta_decoders], dim=1)
        return pick(per_target, slot).view(-1, self.dim, self.dim)

    def map_user(self, user, slot, seq, seq_mask):
        bridge = self.personal_bridge(seq, seq_mask, slot)
        return torch.bmm(self.source_user(user).unsqueeze(1), bridge).squeeze(1)

    def phases(self) -> list[Phase]:

        # The meta phase's forward is the deployed one, so the ordinary task loss trains the meta network.
        return [*self.pretraining_phases(),
                Phase("meta", "targets", select=overlapping_rows, trainable=name_starts("meta_"))]
