"""DACDR: two-step domain-aware cross-attention (MODEL.md), and its three ablations.

Step 1 (DA) attends over the source sequence with the target domain's feature tokens as queries; the mean
of its weights is a coarse allocation alpha over the sequence. Step 2 (IA) attends with the candidate
item's tokens as queries and log(alpha) added to its logits, refining inside the domain-relevant part of
the history. A domain encoder turns [E_d; H_d; H_i] into the transferred user embedding, and a prediction
MLP scores [u_t; E_i].
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from dacdr.data.features import FeatureSpec
from dacdr.models.base import RecModel
from dacdr.models.layers import CrossAttention, FieldEmbeddings, masked_mean, mlp
from dacdr.models.registry import register

Variant = Literal["full", "no_da", "no_ia", "pool"]


@register("DACDR")
class DACDR(RecModel):
    """Domain-Aware Cross-Attention for Cross-domain Recommendation.

    Variants (paper Table 2): ``full``; ``no_da`` (no H_d, uniform prior); ``no_ia`` (no H_i);
    ``pool`` (w/o DA & IA: one masked mean pooling of the sequence replaces both steps).
    """

    # (choice, MODEL.md's config switch) one model for every domain, trained on source and target samples,
    # each with its own domain tokens E_d; `train.train_on: targets` restricts it to target samples.
    train_on = "source+targets"
    broadcasts_history = True

    def __init__(
        self,
        spec: FeatureSpec,
        variant: Variant = "full",
        dim: int = 32,
        heads: int = 2,
        user_dim: int = 64,
        encoder_hidden: tuple[int, ...] = (128,),
        predictor_hidden: tuple[int, ...] = (128, 64),
        dropout: float = 0.0,
        match_features: bool = True,
    ):
        super().__init__(
            spec, variant=variant, dim=dim, heads=heads, user_dim=user_dim,
            encoder_hidden=list(encoder_hidden), predictor_hidden=list(predictor_hidden), dropout=dropout,
            match_features=match_features,
        )
        if variant not in ("full", "no_da", "no_ia", "pool"):
            raise ValueError(f"unknown DACDR variant {variant!r}")
        self.variant = variant
        self.embeddings = FieldEmbeddings(spec, dim)
        m, n = len(spec.domain_fields), len(spec.item_fields)
        self.use_da = variant in ("full", "no_ia")
        self.use_ia = variant in ("full", "no_da")
        self.domain_attention = CrossAttention(dim, heads) if self.use_da else None
        self.item_attention = CrossAttention(dim, heads) if self.use_ia else None
        enc_in = m * dim
        enc_in += m * dim if self.use_da else 0
        enc_in += n * dim if self.use_ia else 0
        enc_in += dim if variant == "pool" else 0
        self.encoder = mlp([enc_in, *encoder_hidden, user_dim], dropout, last_activation=True)
        # (choice, measured in docs/models.md) The predictor also sees the element-wise product of each
        # candidate token with what the history offers for it (H_i, or the pooled / domain-level summary in the
        # ablations), so it need not learn a dot product with ReLUs. `match_features=False` is MODEL.md verbatim.
        self.match_features = match_features
        self.predictor = mlp([user_dim + n * dim * (2 if match_features else 1), *predictor_hidden, 1], dropout)

    def output_layer(self) -> nn.Linear:
        return self.predictor[-1]

    def attend(
        self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor, domain: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The inner quantities: tokens, both attention outputs and their weights (for plots and tests)."""
        emb = self.embeddings
        s = emb.sequence(seq)
        e_d = emb.tokens(domain, self.spec.domain_fields)
        e_i = emb.tokens(item, self.spec.item_fields)
        out: dict[str, torch.Tensor] = {"seq": s, "E_d": e_d, "E_i": e_i}
        log_prior = None
        if self.domain_attention is not None:
            h_d, a_d = self.domain_attention(e_d, s, seq_mask)
            alpha = a_d.mean(dim=(1, 2))  # over heads and domain tokens: one distribution over positions
            out |= {"H_d": h_d, "A_d": a_d, "alpha": alpha}
            if self.item_attention is not None:
                log_prior = torch.log(alpha.clamp_min(1e-12))
        if self.item_attention is not None:
            h_i, a_i = self.item_attention(e_i, s, seq_mask, log_prior)
            out |= {"H_i": h_i, "A_i": a_i}
        if self.variant == "pool":
            out["pooled"] = masked_mean(s, seq_mask)
        return out

    def forward(
        self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        parts = self.attend(seq, seq_mask, item, domain)
        b = item.shape[0]  # user-side inputs may have batch 1 (one user, b candidates): expand is then free

        def flat(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], -1).expand(b, -1)

        enc_in = [flat(parts["E_d"])]
        if "H_d" in parts:
            enc_in.append(flat(parts["H_d"]))
        if "H_i" in parts:
            enc_in.append(flat(parts["H_i"]))
        if "pooled" in parts:
            enc_in.append(flat(parts["pooled"]))
        user = self.encoder(torch.cat(enc_in, dim=1))
        pred_in = [user, parts["E_i"].reshape(b, -1)]
        if self.match_features:
            offered = parts.get("H_i")
            if offered is None:  # no item-level step: the history as a whole, per candidate token
                summary = parts["pooled"] if "pooled" in parts else parts["H_d"].mean(1)
                offered = summary.unsqueeze(1).expand_as(parts["E_i"])
            pred_in.append((offered * parts["E_i"]).reshape(b, -1))
        return self.predictor(torch.cat(pred_in, dim=1)).squeeze(1)


register("DACDR w/o DA", DACDR, variant="no_da")
register("DACDR w/o IA", DACDR, variant="no_ia")
register("DACDR w/o DA&IA", DACDR, variant="pool")
