"""Building blocks shared by the models: field embeddings, masked cross-attention, MLPs."""

from __future__ import annotations

import math

import torch
from torch import nn

from dacdr.data.features import FeatureSpec

# A large finite negative instead of -inf keeps softmax finite on fully masked rows (and in ONNX).
_MASKED = -1e9


class FieldEmbeddings(nn.Module):
    """One embedding table per categorical field, shared wherever the field appears.

    The candidate item and the items of the source sequence use the same item / category / brand tables,
    so what is learnt about an item as a behaviour transfers to it as a candidate.
    """

    def __init__(self, spec: FeatureSpec, dim: int, init_std: float = 0.05):
        super().__init__()
        self.spec = spec
        self.tables = nn.ModuleDict(
            {f: nn.Embedding(spec.vocab_sizes[f], dim, padding_idx=0) for f in spec.fields}
        )
        for t in self.tables.values():
            nn.init.normal_(t.weight, std=init_std)
            with torch.no_grad():
                t.weight[0].zero_()

    def tokens(self, ids: torch.Tensor, fields: list[str]) -> torch.Tensor:
        """[B, n] ids, one per field -> [B, n, k] tokens."""
        return torch.stack([self.tables[f](ids[:, j]) for j, f in enumerate(fields)], dim=1)

    def sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, L, F] ids -> [B, L, k], the sum of the fields' embeddings of each behaviour."""
        out = self.tables[self.spec.sequence_fields[0]](seq[..., 0])
        for j, f in enumerate(self.spec.sequence_fields[1:], start=1):
            out = out + self.tables[f](seq[..., j])
        return out


class CrossAttention(nn.Module):
    """Multi-head masked cross-attention with an optional log-prior on the keys.

    ``softmax(Q W_Q (K W_K)^T / sqrt(k_h) + log prior) V W_V W_O``; a query whose keys are all masked
    returns zeros and zero weights, never NaN.
    """

    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.w_o = nn.Linear(dim, dim, bias=False)

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
        log_prior: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query [B, m, k], keys [B, L, k], mask [B, L] bool, log_prior [B, L] -> ([B, m, k], [B, h, m, L])."""
        b, m, k = query.shape
        kb, length = keys.shape[0], keys.shape[1]  # kb may be 1 against b queries: keys are then broadcast
        q = self.w_q(query).view(b, m, self.heads, self.head_dim).transpose(1, 2)
        kk = self.w_k(keys).view(kb, length, self.heads, self.head_dim).transpose(1, 2)
        v = self.w_v(keys).view(kb, length, self.heads, self.head_dim).transpose(1, 2)
        logits = q @ kk.transpose(-1, -2) / math.sqrt(self.head_dim)
        if log_prior is not None:
            logits = logits + log_prior[:, None, None, :]
        keep = mask[:, None, None, :]
        logits = logits.masked_fill(~keep, _MASKED)
        weights = torch.softmax(logits, dim=-1) * keep.to(logits.dtype)
        out = (weights @ v).transpose(1, 2).reshape(b, m, k)
        return self.w_o(out), weights


def mlp(sizes: list[int], dropout: float = 0.0, last_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def masked_mean(seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of [B, L, k] over unmasked positions; zeros for an empty sequence."""
    w = mask.to(seq.dtype).unsqueeze(-1)
    return (seq * w).sum(1) / w.sum(1).clamp_min(1.0)
