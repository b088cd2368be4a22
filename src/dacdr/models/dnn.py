"""DNN-multi: the YouTube-DNN ranking network (Covington et al., RecSys 2016) on source and target data.

The user is the uniform (masked mean) pooling of her source behaviour sequence; it is concatenated with
the domain and candidate-item embeddings and scored by an MLP. Trained on source and target samples, so
it learns from the rich domain but has no domain-aware selection of behaviours.
"""

from __future__ import annotations

import torch
from torch import nn

from dacdr.data.features import FeatureSpec
from dacdr.models.base import RecModel
from dacdr.models.layers import FieldEmbeddings, masked_mean, mlp
from dacdr.models.registry import register


@register("DNN-multi", family="multi-domain", order=80)
class DNNMulti(RecModel):
    train_on = "source+targets"

    def __init__(
        self, spec: FeatureSpec, dim: int = 32, hidden: tuple[int, ...] = (256, 128, 64), dropout: float = 0.0
    ):
        super().__init__(spec, dim=dim, hidden=list(hidden), dropout=dropout)
        self.embeddings = FieldEmbeddings(spec, dim)
        m, n = len(spec.domain_fields), len(spec.item_fields)
        self.net = mlp([dim + (m + n) * dim, *hidden, 1], dropout)

    def output_layer(self) -> nn.Linear:
        return self.net[-1]

    def forward(
        self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        emb = self.embeddings
        b = seq.shape[0]
        user = masked_mean(emb.sequence(seq), seq_mask)
        e_d = emb.tokens(domain, self.spec.domain_fields).reshape(b, -1)
        e_i = emb.tokens(item, self.spec.item_fields).reshape(b, -1)
        return self.net(torch.cat([user, e_d, e_i], dim=1)).squeeze(1)
