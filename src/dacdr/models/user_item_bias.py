"""UserItemBias: the classic baseline predictor, a global offset plus a user, an item and a domain bias
(Koren, "Factorization meets the neighborhood", KDD 2008, §2.1), trained on source and target rows at once.

One bias per user is shared by every domain, so a cold-start user's bias is learnt from her source rows alone:
the whole transfer is "a user who rates (or clicks) above average in the source does so in the target too".
Under the rating loss the biases are rating offsets, under the click loss logit offsets. It reads neither
the history sequence nor any side feature, so between Pop (the item alone) and CMF (user and item factors)
it measures what a user's overall level carries across domains.
"""

from __future__ import annotations

import torch
from torch import nn

from dacdr.data.features import FIRST_ID, FeatureSpec
from dacdr.models.base import RecModel
from dacdr.models.registry import register


@register("UserItemBias", family="id-bridge", order=25)
class UserItemBias(RecModel):
    train_on = "source+targets"
    inputs = ("seq", "seq_mask", "item", "domain", "user")

    def __init__(self, spec: FeatureSpec, n_users: int | None = None, dim: int = 1):
        # `dim` is accepted (and ignored) so that the benchmarks' shared embedding size applies to every model.
        if not n_users or n_users < FIRST_ID:
            raise ValueError("UserItemBias needs n_users, the size of the user vocabulary "
                             f"(len(prepared.vocabs['user'])); got {n_users!r}")
        super().__init__(spec, n_users=n_users, dim=dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(spec.vocab_sizes["item"], 1, padding_idx=0)
        self.domain_bias = nn.Embedding(spec.vocab_sizes["domain"], 1)
        for table in (self.user_bias, self.item_bias, self.domain_bias):
            nn.init.zeros_(table.weight)  # every score starts at the base rate the trainer puts in the output bias
        self.output = nn.Linear(1, 1)
        with torch.no_grad():
            self.output.weight.fill_(1.0)

    def output_layer(self) -> nn.Linear:
        return self.output

    def forward(
        self,
        seq: torch.Tensor,
        seq_mask: torch.Tensor,
        item: torch.Tensor,
        domain: torch.Tensor,
        user: torch.Tensor,
    ) -> torch.Tensor:
        z = self.user_bias(user) + self.item_bias(item[:, 0]) + self.domain_bias(domain[:, 0])
        return self.output(z).squeeze(1)
