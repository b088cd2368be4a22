"""CMF (Singh & Gordon, "Relational Learning via Collective Matrix Factorization", KDD 2008).

Every domain's user-item matrix is factorised at once with one user embedding shared by all domains; items
(and their biases) have their own embeddings. A cold-start user's embedding is learnt from her source rows
only, and scores target items directly. Trained jointly on source and target samples.

Adaptations to click logs: logistic loss on clicks (the task loss; squared loss for ratings), item biases and
a per-domain bias (the relation-specific offsets of CMF's per-relation link). Inputs: user id and item id.
"""

from __future__ import annotations

import torch
from torch import nn

from dacdr.data.features import FIRST_ID, FeatureSpec
from dacdr.models.base import RecModel
from dacdr.models.registry import register


@register("CMF", family="id-bridge", order=30)
class CMF(RecModel):
    train_on = "source+targets"
    inputs = ("seq", "seq_mask", "item", "domain", "user")

    def __init__(self, spec: FeatureSpec, n_users: int | None = None, dim: int = 32):
        if not n_users or n_users < FIRST_ID:
            raise ValueError(
                "CMF needs n_users, the size of the user vocabulary (len(prepared.vocabs['user'])); got "
                + repr(n_users)
            )
        super().__init__(spec, n_users=n_users, dim=dim)
        n_items = spec.vocab_sizes["item"]
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim, padding_idx=0)
        self.item_bias = nn.Embedding(n_items, 1, padding_idx=0)
        self.domain_bias = nn.Embedding(spec.vocab_sizes["domain"], 1)
        self.out = nn.Linear(1, 1)
        nn.init.normal_(self.user.weight, std=0.05)
        nn.init.normal_(self.item.weight, std=0.05)
        nn.init.zeros_(self.item_bias.weight)
        nn.init.zeros_(self.domain_bias.weight)
        with torch.no_grad():
            self.out.weight.fill_(1.0)
            self.item.weight[0].zero_()

    def output_layer(self) -> nn.Linear:
        return self.out

    def forward(
        self,
        seq: torch.Tensor,
        seq_mask: torch.Tensor,
        item: torch.Tensor,
        domain: torch.Tensor,
        user: torch.Tensor,
    ) -> torch.Tensor:
        item_id = item[:, 0]
        z = (self.user(user) * self.item(item_id)).sum(-1) + self.item_bias(item_id).squeeze(1)
        z = z + self.domain_bias(domain[:, 0]).squeeze(1)
        return self.out(z.unsqueeze(1)).squeeze(1)
