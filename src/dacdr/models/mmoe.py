"""MMoE (Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
KDD 2018): experts shared by all domains, one softmax gate and one tower per domain.

Each domain (the source and every target) is a task; a sample uses its own domain's gate and tower. The
input is the YouTube-DNN input shared with DNN-multi. Trained on source and target samples.
"""

from __future__ import annotations

import torch
from torch import nn

from dacdr.data.features import FeatureSpec
from dacdr.models.layers import FieldEmbeddings, mlp
from dacdr.models.multidomain import TowerModel, Towers, dnn_input, dnn_input_dim, domain_slots, n_domain_slots, pick
from dacdr.models.registry import register


@register("MMoE", family="multi-domain", order=100)
class MMoE(TowerModel):
    train_on = "source+targets"

    def __init__(
        self,
        spec: FeatureSpec,
        dim: int = 32,
        n_experts: int = 4,
        expert: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
    ):
        super().__init__(spec, dim=dim, n_experts=n_experts, expert=list(expert), tower=list(tower), dropout=dropout)
        self.n_slots = n_domain_slots(spec)
        self.n_experts = n_experts
        d_in = dnn_input_dim(spec, dim)
        self.embeddings = FieldEmbeddings(spec, dim)
        self.experts = nn.ModuleList(mlp([d_in, *expert], dropout, last_activation=True) for _ in range(n_experts))
        self.gates = nn.Linear(d_in, self.n_slots * n_experts)  # all domains' gates in one matmul
        self.towers = Towers(self.n_slots, [expert[-1], *tower], dropout)

    def forward(
        self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        x = dnn_input(self.embeddings, self.spec, seq, seq_mask, item, domain)
        slot = domain_slots(domain, self.n_slots)
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, d]
        gate = pick(self.gates(x).view(-1, self.n_slots, self.n_experts), slot).softmax(-1)  # [B, E]
        return self.towers((gate.unsqueeze(-1) * experts).sum(1), slot)
