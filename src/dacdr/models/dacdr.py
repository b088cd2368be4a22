"""DACDR: two-step domain-aware cross-attention (MODEL.md), and its three ablations.

Step 1 (DA) attends over the source sequence with the target domain's feature tokens as queries; the mean
of its weights is a coarse allocation alpha over the sequence. Step 2 (IA) attends with the candidate
item's tokens as queries and log(alpha) added to its logits, refining inside the domain-relevant part of
the history. A domain encoder turns [E_d; H_d; H_i] into the transferred user embedding, and a prediction
MLP scores [u_t; E_i].
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from dacdr.data.features import OOV, FeatureSpec
from dacdr.models.base import RecModel
from dacdr.models.layers import (
    CrossAttention,
    FieldEmbeddings,
    masked_mean,
    mlp,
    plain_graph,
    pool_over,
    recency_index,
    scores_over,
    two_step_attention,
    uniform_weights,
)
from dacdr.models.registry import register

Variant = Literal["full", "no_da", "no_ia", "pool"]
MatchOn = Literal["tokens", "values"]
Ablation = Literal["uniform", "drop"]


@register("DACDR", family="dacdr", order=140)
class DACDR(RecModel):
    """Domain-Aware Cross-Attention for Cross-domain Recommendation.

    Variants (paper Table 2): ``full``; ``no_da`` (step 1 removed: uniform prior); ``no_ia`` (step 2
    removed); ``pool`` (w/o DA & IA: both steps replaced by one masked mean of the sequence).

    How an ablation removes a step (``ablation``):

    - ``"uniform"`` (default): the step keeps its value path and its place in the encoder input, and its
      learnt weights are replaced by a fixed allocation (uniform over the history for step 1, and for step
      2 step 1's allocation alpha). The four variants then have the same architecture and differ only in
      how the history is weighted, which is what the ablation claims to measure.
    - ``"drop"``: MODEL.md's reading before 0.2: the step's output is left out of the encoder (``pool``
      feeds the masked mean of the tokens instead). The variants then also differ in their encoder input.

    What the predictor's match feature compares with each candidate token (``match_on``):

    - ``"tokens"`` (default): the attention-weighted mean of the history's own tokens, in the embedding space
      the candidate lives in;
    - ``"values"``: the attention output ``H_i`` (``W_O W_V`` of that mean), a learnt map that starts random
      (before 0.2 the default; see docs/models.md for the measurements).

    Other levers (docs/models.md): ``value_init="identity"`` starts ``W_V``, ``W_O`` at the identity;
    ``position_keys`` adds a learnt code of each behaviour's recency (0 = most recent) to the keys of both
    steps; ``temperature`` < 1 sharpens both steps' softmax; ``match_counts`` gives the predictor, per candidate field,
    the step-2-weighted share (and log count) of the behaviours with the candidate's item, category, brand
    (``count_weights="uniform"``: the plain share and count, the same for every variant; ``"both"``: the
    attention-weighted and the plain ones side by side; ``"domain"``: weighted by
    step 1's allocation, so that step 2 selects for the match alone);
    ``domain_mass_feature`` gives it step 1's log normaliser (how much of the history the domain scores high);
    ``attention_score="cosine"`` scores by the cosine of query map and token times a learnt per-head scale;
    ``prior_floor`` mixes step 2's prior with the uniform allocation by a learnt share; ``match_bonus`` adds a
    learnt per-field bonus to step 2's logits for behaviours that share the candidate's item / category / brand;
    ``domain_prior`` (on by default since dacdr 0.5) adds to step 1's logits a learnt bias per (domain feature
    value, behaviour attribute value), e.g. (page type, category): a direct path for a domain's focus over the
    history's topics, scaled by ``domain_prior_gain`` (the rate at which Adam moves it); keyed on the ``domain_prior_fields`` among
    the item features (not the item id) that the dataset has — none: no prior — and on the domain fields
    ``domain_prior_keys`` (None: every domain field); ``domain_prior_init="data"`` starts the domain id's table
    from the domains' attribute frequencies in the training rows (`init_from_data`), ``"zero"`` at 0;
    ``history_mean`` (on by default since dacdr 0.6) gives the encoder the whole history's masked mean beside the
    attended summaries, for every variant alike.
    """

    # (choice, MODEL.md's config switch) one model for every domain, trained on source and target samples,
    # each with its own domain tokens E_d; `train.train_on: targets` restricts it to target samples.
    train_on = "source+targets"
    broadcasts_history = True
    # both steps' sequence products in one pass each when training (off: step by step, e.g. for a reference)
    fuse_steps = True
    # ... and the default model's scoring of both steps in one autograd function (off: autograd's graph of it)
    fused_core = True
    # ... with the history's mean (`history_mean`) as one more row of its weighted means (off: a pass of its own)
    fused_mean = True

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
        match_on: MatchOn = "tokens",
        ablation: Ablation = "uniform",
        value_init: Literal["random", "identity"] = "random",
        position_keys: bool = False,
        temperature: float = 0.25,
        mass_feature: bool = False,
        match_counts: bool = True,
        count_weights: Literal["attention", "domain", "uniform", "both"] = "attention",
        domain_mass_feature: bool = False,
        attention_score: Literal["dot", "cosine"] = "dot",
        cosine_scale: float = 10.0,
        prior_floor: bool = True,
        match_bonus: bool = False,
        match_bonus_init: float = 0.0,
        domain_prior: bool = True,
        domain_prior_fields: tuple[str, ...] = ("category",),
        domain_prior_gain: float = 4.0,
        domain_prior_keys: tuple[str, ...] | None = None,
        domain_prior_init: Literal["data", "zero"] = "data",
        history_mean: bool = True,
    ):
        super().__init__(
            spec, variant=variant, dim=dim, heads=heads, user_dim=user_dim,
            encoder_hidden=list(encoder_hidden), predictor_hidden=list(predictor_hidden), dropout=dropout,
            match_features=match_features, match_on=match_on, ablation=ablation, value_init=value_init,
            position_keys=position_keys, temperature=temperature, mass_feature=mass_feature,
            match_counts=match_counts, count_weights=count_weights, domain_mass_feature=domain_mass_feature,
            attention_score=attention_score, cosine_scale=cosine_scale, prior_floor=prior_floor,
            match_bonus=match_bonus, match_bonus_init=match_bonus_init, domain_prior=domain_prior,
            domain_prior_fields=list(domain_prior_fields), domain_prior_gain=domain_prior_gain,
            domain_prior_keys=None if domain_prior_keys is None else list(domain_prior_keys),
            domain_prior_init=domain_prior_init, history_mean=history_mean,
        )
        if variant not in ("full", "no_da", "no_ia", "pool"):
            raise ValueError(f"unknown DACDR variant {variant!r}")
        if match_on not in ("tokens", "values"):
            raise ValueError(f"unknown match_on {match_on!r}: expected 'tokens' or 'values'")
        if ablation not in ("uniform", "drop"):
            raise ValueError(f"unknown ablation {ablation!r}: expected 'uniform' or 'drop'")
        self.variant, self.match_on, self.ablation = variant, match_on, ablation
        self.embeddings = FieldEmbeddings(spec, dim)
        m, n = len(spec.domain_fields), len(spec.item_fields)
        self.use_da = variant in ("full", "no_ia")
        self.use_ia = variant in ("full", "no_da")
        # With ablation "uniform" an ablated step keeps its value path (scores=False); with "drop" it is gone.
        keep_da = self.use_da or ablation == "uniform"
        keep_ia = self.use_ia or ablation == "uniform"
        att = {"temperature": temperature, "value_init": value_init, "score": attention_score,
               "cosine_scale": cosine_scale}
        self.domain_attention = CrossAttention(dim, heads, scores=self.use_da, **att) if keep_da else None
        self.item_attention = CrossAttention(dim, heads, scores=self.use_ia, **att) if keep_ia else None
        # (lever, docs/models.md) step 2's prior is step 1's allocation mixed with the uniform one by a learnt
        # share (sigmoid, starts at 0.12): a sharp step 1 then no longer hides the rest of the history from step 2
        self.prior_logit = nn.Parameter(torch.tensor(-2.0)) if prior_floor and self.use_da and self.use_ia else None
        # (lever, docs/models.md) step 2's logits gain a learnt bonus per candidate field for each behaviour that
        # shares the candidate's value (its item, category, brand): an exact-match key, as DIN's activation unit
        # sees the candidate beside each behaviour; starts at `match_bonus_init` (0: the model without it)
        self.match_bonus = (nn.Parameter(torch.full((n,), float(match_bonus_init)))
                            if match_bonus and self.use_ia else None)
        # (choice, dacdr 0.5, docs/models.md) step 1's logits gain a learnt bias per (domain feature value, behaviour
        # attribute value), one table per pair of fields: the domain's focus over the history's topics written
        # directly instead of learnt through the product of four small embeddings (query, W_Q, W_K, key), which
        # two epochs do not move far from uniform; the domain id's table starts from the data (`init_from_data`)
        self.prior_pairs: list[tuple[int, int]] = []  # (domain field index, item field index)
        if domain_prior and self.use_da:
            attrs = [f for f in domain_prior_fields if f in spec.item_fields[1:]]
            keys = [j for j, f in enumerate(spec.domain_fields) if domain_prior_keys is None or f in domain_prior_keys]
            self.prior_pairs = [(j, spec.item_fields.index(f)) for j in keys for f in attrs]
        self.domain_prior = nn.ParameterList(
            [nn.Parameter(torch.zeros(spec.vocab_sizes[spec.domain_fields[j]], spec.vocab_sizes[spec.item_fields[g]]))
             for j, g in self.prior_pairs]) if self.prior_pairs else None
        self.domain_prior_gain = domain_prior_gain
        if domain_prior_init not in ("data", "zero"):
            raise ValueError(f"unknown domain_prior_init {domain_prior_init!r}: expected 'data' or 'zero'")
        self.domain_prior_init = domain_prior_init
        self.positions = nn.Embedding(spec.max_len, dim) if position_keys else None
        if self.positions is not None:
            nn.init.normal_(self.positions.weight, std=0.05)
        enc_in = m * dim
        enc_in += m * dim if keep_da else 0
        enc_in += n * dim if keep_ia else 0
        # (choice, dacdr 0.6, docs/models.md) the whole history's masked mean as one more encoder input, for every
        # variant alike: a sharp step 1 (0.5's prior) otherwise hides the history as a whole (e.g. how often she
        # clicks at all) from the encoder
        self.history_mean = history_mean
        self.drop_pool = variant == "pool" and ablation == "drop"
        enc_in += dim if self.drop_pool or history_mean else 0
        self.encoder = mlp([enc_in, *encoder_hidden, user_dim], dropout, last_activation=True)
        # (choice, measured in docs/models.md) The predictor also sees the element-wise product of each
        # candidate token with what the history offers for it, so it need not learn a dot product with ReLUs.
        # `match_features=False` is MODEL.md verbatim ("DACDR (paper)").
        self.match_features = match_features
        # (lever, docs/models.md) the item-level step's log normaliser per candidate token: how strongly the
        # history matched the candidate at all, which the softmax divides out (0 for a removed step).
        self.mass_feature = mass_feature
        # (lever, docs/models.md) per candidate field, how much of the history shares the candidate's value
        # (its item, category, brand), weighted by step 2's allocation: the share and log(1 + count).
        if count_weights not in ("attention", "domain", "uniform", "both"):
            raise ValueError(f"unknown count_weights {count_weights!r}: expected 'attention', 'domain', 'uniform' "
                             "or 'both'")
        self.match_counts, self.count_weights = match_counts, count_weights
        pred_in = user_dim + n * dim * (2 if match_features else 1) + (n if mass_feature else 0)
        pred_in += (4 if count_weights == "both" else 2) * n if match_counts else 0
        # (lever, docs/models.md) step 1's log normaliser per domain token: how much of the history the
        # domain's query scores high at all (e.g. the share of the history in the domain's focus), which the
        # softmax divides out (0 without step 1).
        self.domain_mass_feature = domain_mass_feature
        pred_in += m if domain_mass_feature else 0
        self.predictor = mlp([pred_in, *predictor_hidden, 1], dropout)

    @classmethod
    def legacy_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """A description written before a default moved describes the model it was trained as: no `match_on`
        (dacdr 0.1) = values match and dropped steps; no `match_counts` (before 0.3) = no count features; no
        `prior_floor` (before 0.4) = step 2's prior is alpha itself, and softmax temperature 1; no `domain_prior`
        (before 0.5) = none; no `history_mean` (before 0.6) = the encoder without the history's mean."""
        if "match_on" not in params:
            params = params | {"match_on": "values", "ablation": "drop"}
        if "match_counts" not in params:
            params = params | {"match_counts": False}
        if "prior_floor" not in params:
            params = {"temperature": 1.0} | params | {"prior_floor": False}
        if "domain_prior" not in params:
            params = params | {"domain_prior": False}
        if "history_mean" not in params:
            params = params | {"history_mean": False}
        return params

    def output_layer(self) -> nn.Linear:
        return self.predictor[-1]

    def init_from_data(self, data: Any) -> str | None:
        """``domain_prior_init="data"``: the domain id's prior table starts at each domain's log frequency of the
        behaviour attribute among its target training samples' items (centred per domain; 0 for a domain without
        target samples): what the data says about a domain's focus, where a zero start can settle elsewhere in a
        two-epoch budget (docs/results.md). The other domain fields' tables start at 0."""
        if self.domain_prior is None or self.domain_prior_init != "data":
            return None
        done = []
        for (j, g), table in zip(self.prior_pairs, self.domain_prior, strict=True):
            field = self.spec.item_fields[g]
            if self.spec.domain_fields[j] != "domain":
                continue
            counts = data.domain_item_counts(field)
            if counts is None:
                return "domain prior: the data cannot count its training samples in memory; it starts at 0"
            logf = np.log(counts + 1.0)
            logf -= logf.mean(1, keepdims=True)
            logf[counts.sum(1) == 0] = 0.0
            with torch.no_grad():
                table.copy_(torch.as_tensor(logf, dtype=table.dtype) / self.domain_prior_gain)
            done.append(field)
        return f"domain prior: started from the domains' {', '.join(done)} frequencies" if done else None

    def step1_prior(self, seq: torch.Tensor, item: torch.Tensor, domain: torch.Tensor) -> torch.Tensor | None:
        """[B, L]: the domain prior of each behaviour (``domain_prior``), or None without one."""
        if self.domain_prior is None:
            return None
        emb = self.embeddings
        seq_ids, _ = emb.item_ids(seq, item)  # [B or 1, L, >= n]: the item fields lead the sequence's
        dom_ids = emb.domain_ids(domain)  # [B or 1, m]
        # Per item field, each sample's rows of the tables (one per domain field) summed first, then one gather per
        # behaviour: a [B, L] gather per item field instead of per table, and the gradient's scatter onto [B, V]
        # rows (about half the time of a flat gather per table in training).
        out = None
        for g in sorted({g for _, g in self.prior_pairs}):
            rows = None
            for (j, g2), table in zip(self.prior_pairs, self.domain_prior, strict=True):
                if g2 == g:
                    rows = table[dom_ids[:, j]] if rows is None else rows + table[dom_ids[:, j]]  # [B or 1, V]
            ids = seq_ids[..., g]  # [B or 1, L]
            b = max(rows.shape[0], ids.shape[0])  # one side may be a single user's (serving)
            term = torch.gather(rows.expand(b, -1), 1, ids.expand(b, -1))
            out = term if out is None else out + term
        return self.domain_prior_gain * out

    def attend(
        self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor, domain: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The inner quantities: tokens, both steps' weights and outputs, and what the match compares with each
        candidate token (for plots, explanations and tests)."""
        emb = self.embeddings
        s = emb.sequence(seq)
        e_d = emb.tokens(domain, self.spec.domain_fields)
        e_i = emb.tokens(item, self.spec.item_fields)
        if self.positions is None:
            keys = s
        else:  # behaviours older than max_len (longer inputs than training saw) share the oldest code
            keys = s + self.positions(recency_index(seq_mask).clamp_max(self.spec.max_len - 1))
        out: dict[str, torch.Tensor] = {"seq": s, "E_d": e_d, "E_i": e_i}
        uniform = uniform_weights(seq_mask)  # [B, 1, 1, L]

        # In training both steps' products with the sequence are taken in one pass each (the scores of both
        # steps' queries, then the weighted means of both steps): the sequence is read, and its gradient
        # accumulated, twice instead of five times. Same maths (tests/models/test_attention_parity.py);
        # evaluation, serving and traces take the steps one by one.
        fuse = (self.fuse_steps and self.use_da and self.use_ia and e_d.shape[0] == e_i.shape[0]
                and not plain_graph())
        da, ia = self.domain_attention, self.item_attention
        # The default model's scoring in one autograd function (layers._TwoStepAttention): a hand-written
        # backward in one pass per step, the sequence's two gradients summed inside the products. Levers it does
        # not cover (position keys, cosine scores, the match bonus, autocast) take the graph below.
        core = (fuse and self.fused_core and self.positions is None and self.match_bonus is None
                and da.log_scale is None and not torch.is_autocast_enabled(s.device.type))
        prior_d = self.step1_prior(seq, item, domain) if self.use_da else None
        if core:
            rows_d = da.query_rows(e_d)
            md, h, length = rows_d.shape[1], da.heads, s.shape[1]
            mix = torch.sigmoid(self.prior_logit) if self.prior_logit is not None else None
            pooled, w, alpha, log_mass_d, log_mass = two_step_attention(
                torch.cat([rows_d, ia.query_rows(e_i)], dim=1), s, seq_mask, mix, md,
                self.domain_mass_feature, self.mass_feature, prior_d, self.history_mean and self.fused_mean)
            if self.history_mean and self.fused_mean:  # the history's mean: the means' last row (its gradient inside)
                out["pooled"], pooled = pooled[:, -1], pooled[:, :-1]
            a_d = w[:, :md].view(w.shape[0], -1, h, length).transpose(1, 2)  # [B, h, m, L]
            a_i = w[:, md:].view(w.shape[0], -1, h, length).transpose(1, 2)  # [B, h, n, L]
            if log_mass_d is not None:
                out["log_mass_d"] = log_mass_d.view(w.shape[0], -1, h).mean(2)  # [B, m]
            if log_mass is not None:
                out["log_mass"] = log_mass.view(w.shape[0], -1, h).mean(2)  # [B, n]
            out |= {"A_d": a_d, "alpha": alpha}
        else:
            if fuse:
                rows_d = da.query_rows(e_d)
                md = rows_d.shape[1]
                logits = scores_over(torch.cat([rows_d, ia.query_rows(e_i)], dim=1), keys)

            # Step 1 (DA): which behaviours matter for this domain.
            if self.use_da:
                logits_d = logits[:, :md] if fuse else scores_over(da.query_rows(e_d), keys)
                if prior_d is not None:  # the domain prior: part of step 1's logits (its log-mass included)
                    logits_d = logits_d + prior_d[:, None, :]
                # the normaliser only when the predictor reads it
                a_d, log_mass_d = da.weights_from_scores(logits_d, keys, seq_mask, None, self.domain_mass_feature)
                if log_mass_d is not None:
                    out["log_mass_d"] = log_mass_d.mean(1)  # [B, m]
                alpha = a_d.mean(dim=(1, 2))  # over heads and domain tokens: one distribution over positions
            else:
                a_d, alpha = uniform.expand(-1, 1, e_d.shape[1], -1), uniform[:, 0, 0]
                out["log_mass_d"] = torch.zeros(alpha.shape[0], e_d.shape[1], dtype=s.dtype, device=s.device)
            out |= {"A_d": a_d, "alpha": alpha}
            if da is not None and not fuse:
                out["H_d"] = da.values(a_d.expand(-1, -1, e_d.shape[1], -1), s)

            # Step 2 (IA): which of those matter for this candidate, inside step 1's allocation.
            if self.use_ia:
                prior = alpha
                if self.prior_logit is not None:
                    mix = torch.sigmoid(self.prior_logit)
                    prior = (1 - mix) * alpha + mix * uniform[:, 0, 0]
                log_prior = torch.log(prior.clamp_min(1e-12)) if self.use_da else None
                if self.match_bonus is not None:
                    bonus = (self.match_bonus[None, :, None] * field_hit_matrix(*emb.item_ids(seq, item), seq_mask)).sum(1)
                    log_prior = bonus if log_prior is None else log_prior + bonus
                # the normaliser only when the predictor reads it (`mass_feature`)
                if fuse:
                    a_i, log_mass = ia.weights_from_scores(logits[:, md:], keys, seq_mask, log_prior, self.mass_feature)
                elif self.mass_feature:
                    a_i, log_mass = ia.weights_and_mass(e_i, keys, seq_mask, log_prior)
                else:
                    a_i, log_mass = ia.weights(e_i, keys, seq_mask, log_prior), None
                if log_mass is not None:
                    out["log_mass"] = log_mass.mean(1)  # [B, n]
            else:
                a_i = alpha[:, None, None, :].expand(-1, 1, e_i.shape[1], -1)
                if self.mass_feature:
                    out["log_mass"] = torch.zeros(alpha.shape[0], e_i.shape[1], dtype=s.dtype, device=s.device)
        out["A_i"] = a_i
        offered = None
        if fuse:
            b, k, h = s.shape[0], s.shape[-1], ia.heads
            if not core:
                pooled = pool_over(torch.cat([da.rows(a_d), ia.rows(a_i)], dim=1), s)  # [B, (m + n) h, k]
            means_i = pooled[:, md:].view(b, -1, h, k)  # step 2's weighted means per (candidate token, head)
            out["H_d"] = da.project(pooled[:, :md].view(b, -1, h, k))
            out["H_i"] = ia.project(means_i)
            offered = means_i.mean(2)  # == a_i.mean(1) @ s
        elif ia is not None:
            out["H_i"] = ia.values(a_i, s)
        if (self.drop_pool or self.history_mean) and "pooled" not in out:
            out["pooled"] = masked_mean(s, seq_mask)

        a_mean = a_i.mean(1)  # [B, n, L]: step 2's allocation per candidate token
        if self.match_counts:
            if self.count_weights == "attention":
                w = a_mean
            elif self.count_weights == "domain":
                w = alpha[:, None, :].expand(-1, e_i.shape[1], -1)
            else:  # "uniform", and "both"'s second half
                w = uniform[:, 0].expand(-1, e_i.shape[1], -1)
            out["hits"] = field_hits(*emb.item_ids(seq, item), seq_mask, w)
            if self.count_weights == "both":  # step 2's weighted counts beside the plain ones
                out["hits"] = torch.cat([field_hits(*emb.item_ids(seq, item), seq_mask, a_mean), out["hits"]], dim=1)

        if self.match_on == "tokens":
            if offered is None:
                offered = a_mean @ s
            out["offered"] = offered.expand_as(e_i)  # [B, n, k]: weighted raw tokens per candidate token
        elif "H_i" in out:
            out["offered"] = out["H_i"]
        else:  # "values" without an item-level output (ablation "drop"): the history as a whole
            summary = out["pooled"] if self.drop_pool else out["H_d"].mean(1)
            out["offered"] = summary.unsqueeze(1).expand_as(e_i)
        return out

    def forward(
        self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        parts = self.attend(seq, seq_mask, item, domain)
        b = item.shape[0]  # user-side inputs may have batch 1 (one user, b candidates): expand is then free

        def flat(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], -1).expand(b, -1)

        enc_in = [flat(parts["E_d"])]
        for key in ("H_d", "H_i", "pooled"):
            if key in parts:
                enc_in.append(flat(parts[key]))
        user = self.encoder(torch.cat(enc_in, dim=1))
        pred_in = [user, parts["E_i"].reshape(b, -1)]
        if self.match_features:
            pred_in.append((parts["offered"] * parts["E_i"]).reshape(b, -1))
        if self.mass_feature:
            pred_in.append(parts["log_mass"].expand(b, -1))
        if self.match_counts:
            pred_in.append(parts["hits"].expand(b, -1))
        if self.domain_mass_feature:
            pred_in.append(parts["log_mass_d"].expand(b, -1))
        return self.predictor(torch.cat(pred_in, dim=1)).squeeze(1)


def field_hit_matrix(seq: torch.Tensor, item: torch.Tensor, seq_mask: torch.Tensor) -> torch.Tensor:
    """[B, n, L] float: 1 where behaviour l has candidate field f's value (padding and out-of-vocabulary never)."""
    n = item.shape[1]
    hit = (seq[..., :n].transpose(1, 2) == item[:, :, None]) & (item[:, :, None] > OOV) & seq_mask[:, None, :]
    return hit.to(torch.get_default_dtype())


def field_hits(seq: torch.Tensor, item: torch.Tensor, seq_mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """How much of the history shares each candidate field's value: [B, 2n] = per field, the weighted share
    ``sum_l w_l [s_lf == c_f]`` and ``log(1 + share * valid behaviours)`` (with uniform weights, the count).

    seq [B or 1, L, F] ids whose first n fields are the item fields, item [B, n] ids, weights [B or 1, n, L]
    (step 2's allocation per candidate token). Padding and out-of-vocabulary ids never match.
    """
    hit = field_hit_matrix(seq, item, seq_mask)
    share = (weights * hit.to(weights.dtype)).sum(-1)  # [B, n]
    valid = seq_mask.to(weights.dtype).sum(-1, keepdim=True)  # [B or 1, 1]
    return torch.cat([share, torch.log1p(share * valid)], dim=1)


register("DACDR w/o DA", DACDR, family="dacdr", order=150, tags=("ablation",), variant="no_da")
register("DACDR w/o IA", DACDR, family="dacdr", order=160, tags=("ablation",), variant="no_ia")
register("DACDR w/o DA&IA", DACDR, family="dacdr", order=170, tags=("ablation",),
         variant="pool")
# MODEL.md verbatim: no match feature (the predictor sees [u_t; vec(E_i)]), ablations as the paper reads them.
register("DACDR (paper)", DACDR, family="dacdr", order=130, variant="full", match_features=False, ablation="drop",
         match_on="values", match_counts=False, temperature=1.0, prior_floor=False,
         domain_prior=False, history_mean=False)
