"""Shared-Bottom (Caruana, "Multitask Learning", Machine Learning 1997): a bottom network shared by all
domains and one tower per domain.

Each domain (the source and every target) is a task. The input is the YouTube-DNN input shared with
DNN-multi (mean-pooled source behaviours, domain-feature tokens, candidate-item tokens); the tower is chosen
by the sample's domain. Trained on source and target samples.
"""

from __future__ import annotations

import torch

from dacdr.data.features import FeatureSpec
from dacdr.models.layers import FieldEmbeddings, mlp
from dacdr.models.multidomain import TowerModel, Towers, dnn_input, dnn_input_dim, domain_slots, n_domain_slots
from dacdr.models.registry import register


@register("Shared-Bottom", family="multi-domain", order=90)
class SharedBottom(TowerModel):
    train_on = "source+targets"

    def __init__(
        self,
        spec: FeatureSpec,
        dim: int = 32,
        bottom: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
    ):
        super().__init__(spec, dim=dim, bottom=list(bottom), tower=list(tower), dropout=dropout)
        self.n_slots = n_domain_slots(spec)
        self.embeddings = FieldEmbeddings(spec, dim)
        self.bottom = mlp([dnn_input_dim(spec, dim), *bottom], dropout, last_activation=True)
        self.towers = Towers(self.n_slots, [bottom[-1], *tower], dropout)

    def forward(
        self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        h = self.bottom(dnn_input(self.embeddings, self.spec, seq, seq_mask, item, domain))
        return self.towers(h, domain_slots(domain, self.n_slots))
