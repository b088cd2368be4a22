"""PLE (Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
Personalized Recommendations", RecSys 2020): stacked Customized Gate Control (CGC) levels with experts
specific to each domain and experts shared by all, then one tower per domain.

Each domain (the source and every target) is a task. In every level, task `t`'s gate mixes task `t`'s
experts with the shared experts; below the last level a shared gate mixes all experts into the input of
the next level's shared experts (the progressive extraction). The input is the YouTube-DNN input shared with
DNN-multi; a sample uses its own domain's output and tower. Trained on source and target samples.
"""

from __future__ import annotations

import torch
from torch import nn

from dacdr.data.features import FeatureSpec
from dacdr.models.layers import FieldEmbeddings, mlp
from dacdr.models.multidomain import TowerModel, Towers, dnn_input, dnn_input_dim, domain_slots, n_domain_slots
from dacdr.models.registry import register


class CGCLevel(nn.Module):
    """One extraction level: per-task and shared experts, per-task gates, and (below the top) a shared gate."""

    def __init__(self, n_tasks: int, n_task_experts: int, n_shared: int, d_in: int, expert: list[int],
                 dropout: float, last: bool):
        super().__init__()
        self.n_tasks, self.n_task_experts, self.n_shared = n_tasks, n_task_experts, n_shared
        self.task_experts = nn.ModuleList(
            nn.ModuleList(mlp([d_in, *expert], dropout, last_activation=True) for _ in range(n_task_experts))
            for _ in range(n_tasks)
        )
        self.shared_experts = nn.ModuleList(
            mlp([d_in, *expert], dropout, last_activation=True) for _ in range(n_shared)
        )
        self.task_gates = nn.ModuleList(nn.Linear(d_in, n_task_experts + n_shared) for _ in range(n_tasks))
        self.shared_gate = None if last else nn.Linear(d_in, n_tasks * n_task_experts + n_shared)

    def forward(self, task_in: torch.Tensor, shared_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """task_in [B, T, d], shared_in [B, d] -> per-task outputs [B, T, d'], shared output [B, d'] or None."""
        shared = [e(shared_in) for e in self.shared_experts]
        task_outs, all_task_experts = [], []
        for t in range(self.n_tasks):
            own = [e(task_in[:, t]) for e in self.task_experts[t]]
            all_task_experts += own
            experts = torch.stack(own + shared, dim=1)
            gate = self.task_gates[t](task_in[:, t]).softmax(-1).unsqueeze(-1)
            task_outs.append((gate * experts).sum(1))
        shared_out = None
        if self.shared_gate is not None:
            experts = torch.stack(all_task_experts + shared, dim=1)
            gate = self.shared_gate(shared_in).softmax(-1).unsqueeze(-1)
            shared_out = (gate * experts).sum(1)
        return torch.stack(task_outs, dim=1), shared_out


@register("PLE", family="multi-domain", order=110)
class PLE(TowerModel):
    train_on = "source+targets"

    def __init__(
        self,
        spec: FeatureSpec,
        dim: int = 32,
        levels: int = 2,
        n_task_experts: int = 1,
        n_shared_experts: int = 2,
        expert: tuple[int, ...] = (128,),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
    ):
        super().__init__(spec, dim=dim, levels=levels, n_task_experts=n_task_experts,
                         n_shared_experts=n_shared_experts, expert=list(expert), tower=list(tower), dropout=dropout)
        if levels < 1:
            raise ValueError(f"PLE needs at least one level, got levels={levels}")
        self.n_slots = n_domain_slots(spec)
        self.embeddings = FieldEmbeddings(spec, dim)
        d_in = dnn_input_dim(spec, dim)
        self.levels = nn.ModuleList(
            CGCLevel(self.n_slots, n_task_experts, n_shared_experts, d_in if i == 0 else expert[-1],
                     list(expert), dropout, last=i == levels - 1)
            for i in range(levels)
        )
        self.towers = Towers(self.n_slots, [expert[-1], *tower], dropout)

    def forward(
        self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        x = dnn_input(self.embeddings, self.spec, seq, seq_mask, item, domain)
        task_in, shared_in = x.unsqueeze(1).expand(-1, self.n_slots, -1), x
        for level in self.levels:
            task_in, shared_in = level(task_in, shared_in)
        return self.towers(task_in, domain_slots(domain, self.n_slots))
