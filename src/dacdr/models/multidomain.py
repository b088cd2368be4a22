"""Helpers shared by the per-domain baselines (DNN-single, Shared-Bottom, MMoE, PLE, STAR).

A sample's domain is `domain[:, 0]`, its index in the domain vocabulary. The vocabulary is built from
`[source, *targets]` (`dacdr.data.samples.build_vocabularies`), so index `FIRST_ID + k` is domain slot `k`:
slot 0 is the source, slots 1.. the targets. Towers and gates are indexed by slot.
"""

from __future__ import annotations

import torch
from torch import nn

from dacdr.data.features import FIRST_ID, FeatureSpec
from dacdr.models.base import RecModel
from dacdr.models.layers import FieldEmbeddings, masked_mean, mlp


def n_domain_slots(spec: FeatureSpec) -> int:
    """Source plus targets."""
    return 1 + len(spec.target_domains)


def domain_slots(domain: torch.Tensor, n_slots: int, offset: int = 0) -> torch.Tensor:
    """[B, m] domain tokens -> [B] slot in [0, n_slots). `offset=1` drops the source (target-only models).

    A domain outside the training vocabulary (padding, OOV, a domain added later) falls back to slot 0,
    so scoring never indexes out of range.
    """
    slot = domain[:, 0] - FIRST_ID - offset
    return torch.where((slot >= 0) & (slot < n_slots), slot, torch.zeros_like(slot))


def dnn_input(
    emb: FieldEmbeddings,
    spec: FeatureSpec,
    seq: torch.Tensor,
    seq_mask: torch.Tensor,
    item: torch.Tensor,
    domain: torch.Tensor | None,
) -> torch.Tensor:
    """The YouTube-DNN input: mean-pooled source behaviours, [domain tokens], candidate-item tokens."""
    b = seq.shape[0]
    parts = [masked_mean(emb.sequence(seq), seq_mask)]
    if domain is not None:
        parts.append(emb.tokens(domain, spec.domain_fields).reshape(b, -1))
    parts.append(emb.tokens(item, spec.item_fields).reshape(b, -1))
    return torch.cat(parts, dim=1)


def dnn_input_dim(spec: FeatureSpec, dim: int, with_domain: bool = True) -> int:
    return dim * (1 + len(spec.item_fields) + (len(spec.domain_fields) if with_domain else 0))


def pick(per_slot: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """[B, S, ...] computed for every slot -> [B, ...] of each sample's own slot."""
    index = slot.view(-1, *([1] * (per_slot.dim() - 1))).expand(-1, 1, *per_slot.shape[2:])
    return per_slot.gather(1, index).squeeze(1)


class Towers(nn.Module):
    """One MLP tower per domain slot, ending in one logit; every tower is evaluated and the sample's picked
    (towers are small, and a fixed graph exports cleanly)."""

    def __init__(self, n_slots: int, sizes: list[int], dropout: float = 0.0):
        super().__init__()
        self.towers = nn.ModuleList(mlp([*sizes, 1], dropout) for _ in range(n_slots))

    def forward(self, h: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """h [B, d] or [B, S, d] (a per-slot input) -> [B] logits."""
        per_slot_input = h.dim() == 3
        outs = [t(h[:, s] if per_slot_input else h) for s, t in enumerate(self.towers)]
        return pick(torch.cat(outs, dim=1), slot)

    def output_layers(self) -> list[nn.Linear]:
        return [t[-1] for t in self.towers]


class TowerModel(RecModel):
    """A multi-domain model ending in per-domain towers (`self.towers`): its output layers are the towers'."""

    towers: Towers

    def output_layer(self) -> nn.Linear:
        return self.towers.output_layers()[0]

    def output_layers(self) -> list[nn.Linear]:
        return self.towers.output_layers()
