"""STAR (Sheng et al., "One Model to Serve All: Star Topology Adaptive Recommender for Multi-Domain CTR
Prediction", CIKM 2021): partitioned normalisation, a star-topology fully-connected network and an
auxiliary network on the domain features.

- **Partitioned normalisation (PN)**: `z' = (γ ⊙ γ_p) (z − μ) / sqrt(σ² + ε) + (β + β_p)`; in training
  μ, σ² are the statistics of domain `p`'s samples in the batch, at inference domain `p`'s moving averages.
- **Star-topology FC**: every layer has shared weights `W`, `b` and per-domain `W_p`, `b_p`; domain `p`
  uses `W ⊙ W_p` and `b + b_p` (W_p starts at ones, b_p at zeros: every domain starts from the centre).
- **Auxiliary network**: a small MLP on the domain-indicator tokens (domain id, page type, business line)
  whose logit is added to the star network's, so domain differences act on the output directly.

The main input is the mean-pooled source behaviours and the candidate-item tokens (the paper's pooled user
behaviour sequence and item features). Trained on source and target samples; a domain is a slot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dacdr.data.features import FeatureSpec
from dacdr.models.base import RecModel
from dacdr.models.layers import FieldEmbeddings, mlp
from dacdr.models.multidomain import dnn_input, dnn_input_dim, domain_slots, n_domain_slots
from dacdr.models.registry import register


class PartitionedNorm(nn.Module):
    def __init__(self, n_features: int, n_slots: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.n_slots, self.momentum, self.eps = n_slots, momentum, eps
        self.gamma = nn.Parameter(torch.ones(n_features))
        self.beta = nn.Parameter(torch.zeros(n_features))
        self.domain_gamma = nn.Parameter(torch.ones(n_slots, n_features))
        self.domain_beta = nn.Parameter(torch.zeros(n_slots, n_features))
        self.register_buffer("running_mean", torch.zeros(n_slots, n_features))
        self.register_buffer("running_var", torch.ones(n_slots, n_features))

    def forward(self, x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        mean, var = self.running_mean, self.running_var
        if self.training:
            means, variances = [], []
            for s in range(self.n_slots):
                rows = x[slot == s]
                if len(rows) < 2:  # no batch statistics for this domain: keep its moving averages
                    means.append(self.running_mean[s].clone())
                    variances.append(self.running_var[s].clone())
                    continue
                m, v = rows.mean(0), rows.var(0, unbiased=False)
                with torch.no_grad():
                    self.running_mean[s].lerp_(m.detach(), self.momentum)
                    self.running_var[s].lerp_(rows.var(0).detach(), self.momentum)
                means.append(m)
                variances.append(v)
            mean, var = torch.stack(means), torch.stack(variances)
        z = (x - mean[slot]) / torch.sqrt(var[slot] + self.eps)
        return z * (self.gamma * self.domain_gamma[slot]) + (self.beta + self.domain_beta[slot])


class StarLinear(nn.Module):
    """`x (W ⊙ W_p)ᵀ + (b + b_p)` for the domain `p` of each sample."""

    def __init__(self, d_in: int, d_out: int, n_slots: int):
        super().__init__()
        self.n_slots = n_slots
        self.shared = nn.Linear(d_in, d_out)
        self.domain_weight = nn.Parameter(torch.ones(n_slots, d_out, d_in))
        self.domain_bias = nn.Parameter(torch.zeros(n_slots, d_out))

    def forward(self, x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], self.shared.out_features)
        for s in range(self.n_slots):
            rows = (slot == s).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            y = F.linear(x[rows], self.shared.weight * self.domain_weight[s], self.shared.bias + self.domain_bias[s])
            out = out.index_put((rows,), y)
        return out


@register("STAR", family="multi-domain", order=120)
class STAR(RecModel):
    train_on = "source+targets"

    def __init__(
        self,
        spec: FeatureSpec,
        dim: int = 32,
        hidden: tuple[int, ...] = (256, 128, 64),
        aux_hidden: tuple[int, ...] = (32,),
    ):
        super().__init__(spec, dim=dim, hidden=list(hidden), aux_hidden=list(aux_hidden))
        self.n_slots = n_domain_slots(spec)
        self.embeddings = FieldEmbeddings(spec, dim)
        d_in = dnn_input_dim(spec, dim, with_domain=False)
        self.norm = PartitionedNorm(d_in, self.n_slots)
        sizes = [d_in, *hidden, 1]
        self.star = nn.ModuleList(StarLinear(a, b, self.n_slots) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.aux = mlp([len(spec.domain_fields) * dim, *aux_hidden, 1])

    def output_layer(self) -> nn.Linear:
        # The auxiliary logit starts at zero bias, so the star network's output carries the base rate.
        return self.star[-1].shared

    def forward(
        self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        slot = domain_slots(domain, self.n_slots)
        h = self.norm(dnn_input(self.embeddings, self.spec, seq, seq_mask, item, None), slot)
        for i, layer in enumerate(self.star):
            h = layer(h, slot)
            if i < len(self.star) - 1:
                h = F.relu(h)
        e_d = self.embeddings.tokens(domain, self.spec.domain_fields).reshape(seq.shape[0], -1)
        return h.squeeze(1) + self.aux(e_d).squeeze(1)
