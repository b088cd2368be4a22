"""DNN-single: the YouTube-DNN ranking network (Covington et al., "Deep Neural Networks for YouTube
Recommendations", RecSys 2016), one network per target domain trained on that domain's data only.

The paper's DNN-single "trains models for each domain separately using only target domain dataset". Here
that is one registry entry holding fully disjoint parameters per target (its own embedding tables and MLP):
a sample only ever touches the network of its own domain, so training the entry on all targets at once is
the same as training the per-domain models separately, and it runs, saves and evaluates like every other
model. The user is the mean-pooled embedding of her source behaviours (the only user input a cold-start
user has), as in DNN-multi; the candidate item's id and side features are its other inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from dacdr.data.features import FeatureSpec
from dacdr.models.base import RecModel
from dacdr.models.layers import FieldEmbeddings, mlp
from dacdr.models.multidomain import dnn_input, dnn_input_dim, domain_slots
from dacdr.models.registry import register


@register("DNN-single", family="single-domain", order=20)
class DNNSingle(RecModel):
    train_on = "targets"

    def __init__(
        self, spec: FeatureSpec, dim: int = 32, hidden: tuple[int, ...] = (256, 128, 64), dropout: float = 0.0
    ):
        super().__init__(spec, dim=dim, hidden=list(hidden), dropout=dropout)
        self.n_targets = len(spec.target_domains)
        # The domain id is constant inside one domain's model, so it is not an input (it would only be a bias).
        self.embeddings = nn.ModuleList(FieldEmbeddings(spec, dim) for _ in range(self.n_targets))
        self.nets = nn.ModuleList(
            mlp([dnn_input_dim(spec, dim, with_domain=False), *hidden, 1], dropout) for _ in range(self.n_targets)
        )

    def output_layer(self) -> nn.Linear:
        return self.nets[0][-1]

    def output_layers(self) -> list[nn.Linear]:
        return [net[-1] for net in self.nets]

    def forward(
        self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        # Unknown domains (and the source) are scored by the first target's network.
        slot = domain_slots(domain, self.n_targets, offset=1)
        out = seq.new_zeros(seq.shape[0], dtype=torch.float32)
        for t in range(self.n_targets):
            rows = (slot == t).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            x = dnn_input(self.embeddings[t], self.spec, seq[rows], seq_mask[rows], item[rows], None)
            out = out.index_put((rows,), self.nets[t](x).squeeze(1))
        return out
