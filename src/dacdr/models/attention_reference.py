"""CrossAttention's textbook form: the keys and values projected over the whole sequence, `logsumexp` for the
log-mass. The library computes the same maths without those projections (`layers.CrossAttention`); this form is
kept as the reference the parity test compares against and the throughput benchmark times
(docs/benchmarks.md). Functions with `CrossAttention`'s method signatures, to be patched onto the class."""

from __future__ import annotations

from typing import Any

import torch

from dacdr.models.layers import _MASKED


def textbook_weights_and_mass(self: Any, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                              log_prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    b, m, _ = query.shape
    kb, length = keys.shape[0], keys.shape[1]
    q = self.w_q(query).view(b, m, self.heads, self.head_dim).transpose(1, 2)
    kk = self.w_k(keys).view(kb, length, self.heads, self.head_dim).transpose(1, 2)
    logits = q @ kk.transpose(-1, -2) * self.scale
    if log_prior is not None:
        logits = logits + log_prior[:, None, None, :]
    keep = mask[:, None, None, :]
    logits = logits.masked_fill(~keep, _MASKED)
    weights = torch.softmax(logits, dim=-1) * keep.to(logits.dtype)
    valid = keep.to(logits.dtype).sum(-1)
    log_mass = torch.logsumexp(logits, dim=-1)
    if log_prior is None:
        log_mass = log_mass - torch.log(valid.clamp_min(1.0))
    return weights, torch.where(valid > 0, log_mass, torch.zeros_like(log_mass))


def textbook_weights(self: Any, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                     log_prior: torch.Tensor | None = None) -> torch.Tensor:
    return textbook_weights_and_mass(self, query, keys, mask, log_prior)[0]


def textbook_values(self: Any, weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    vb, length, k = values.shape
    v = self.w_v(values).view(vb, length, self.heads, self.head_dim).transpose(1, 2)
    out = weights.expand(-1, self.heads, -1, -1) @ v
    return self.w_o(out.transpose(1, 2).reshape(out.shape[0], out.shape[2], k))


TEXTBOOK_METHODS = {"weights_and_mass": textbook_weights_and_mass, "weights": textbook_weights,
                    "values": textbook_values}
