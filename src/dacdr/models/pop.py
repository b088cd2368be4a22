"""Pop: the candidate item's own popularity, nothing personal (the floor every recommender must clear).

One learnt scalar per item on top of the global base rate, trained like every model: under the click loss it
is the item's click rate (its popularity among the users it was shown to), under the rating loss its mean
rating, and under the ranking protocol's sampled negatives its interaction popularity. Rare items stay near
the global rate (they get few updates): a mild, data-driven shrinkage. It reads neither the history nor the
domain, so its gap to a model is what personalisation and transfer add.
"""

from __future__ import annotations

import torch
from torch import nn

from dacdr.data.features import FeatureSpec
from dacdr.models.base import RecModel
from dacdr.models.registry import register


@register("Pop", family="floor", order=10)
class Pop(RecModel):
    train_on = "targets"

    def __init__(self, spec: FeatureSpec, dim: int = 1):
        # `dim` is accepted (and ignored) so that the benchmarks' shared embedding size applies to every model.
        super().__init__(spec, dim=dim)
        self.item_bias = nn.Embedding(spec.vocab_sizes[spec.item_fields[0]], 1)
        nn.init.zeros_(self.item_bias.weight)
        self.output = nn.Linear(1, 1)
        with torch.no_grad():
            self.output.weight.fill_(1.0)

    def output_layer(self) -> nn.Linear:
        return self.output

    def forward(
        self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        return self.output(self.item_bias(item[:, 0])).squeeze(1)
