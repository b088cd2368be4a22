"""DACDR split into a user-side and a candidate-side ONNX graph, the user side cached per history.

One request scores one user's history against N candidates. Everything that does not depend on the candidate
(the sequence embedding, step 1's domain attention and its allocation alpha, step 1's output and the
encoder's user-only part, what step 2 needs from the history) is computed by the **user-side graph** once
per (domain, history) and cached; the **candidate-side graph** runs per request on the candidates' ids and
those cached tensors, with about 40 nodes instead of the single graph's ~300.

The algebra (exact up to float rounding; `tests/serving/test_split.py` checks it against the eager model):

- step 2's logits ``(E_i Q) K^T`` become ``E_i (Q K^T)``: the user side folds the query map into the keys,
  ``kmat`` [k, h L], and the mask and step 1's log prior into one bias [h L];
- ``H_i`` and the token-match ``offered`` are linear in the per-head pooled history ``a_h s`` [n h k], so
  the step-2 value map, the encoder's first-layer columns for ``H_i`` and the head mean fold into one
  constant matrix ``wc`` (model weights only);
- the encoder's first layer on ``[E_d; H_d; H_i]`` splits into a user-side part (bias + E_d, H_d columns)
  and the candidate's ``H_i`` part; without a learnt item-level step (w/o IA, w/o DA&IA) the whole user
  embedding is user-side and folds into the predictor's first-layer bias;
- the user side pads the history to `max_len` (masked positions get weight exactly 0), so the candidate
  graph's shapes are static except the candidate axis.

The split reads the model's own modules (embeddings, attention projections, encoder, predictor) and calls
`DACDR.attend` for the user-side quantities; a model the split does not cover (`split_support`) keeps the
single graph. `SplitOnnxEngine` also checks the split against the eager model when it is built and falls
back to the single graph if they differ, so a model change the split does not know cannot serve wrong scores.
"""

from __future__ import annotations

import functools
import inspect
import io
import warnings

import torch
from torch import nn

from dacdr.data.features import OOV
from dacdr.export import ONNX_OPSET
from dacdr.models.layers import recency_index

USER_INPUTS = ("seq", "seq_mask", "domain")
COVERED_PARAMS = {
    "variant", "dim", "heads", "user_dim", "encoder_hidden", "predictor_hidden", "dropout", "match_features",
    "match_on", "ablation", "value_init", "position_keys", "temperature", "mass_feature", "match_counts",
    "count_weights", "domain_mass_feature", "attention_score", "cosine_scale", "prior_floor", "match_bonus",
    "match_bonus_init", "domain_prior", "domain_prior_fields", "domain_prior_gain",
    "domain_prior_keys", "domain_prior_init", "history_mean",
}
"""DACDR's constructor parameters the split reproduces (`match_bonus` only when off; the domain prior is part of
step 1, all user side); a model with another one
set away from its default keeps the single graph (a new lever may change what the split folds, and the
start-up check alone may not see a small change)"""


def user_output_names(model: nn.Module) -> list[str]:
    """The user-side graph's outputs, in order (the candidate-side graph's inputs after `item`)."""
    if model.use_ia:
        names = ["kmat", "bias", "s_m", "enc_pre"] + (["mass"] if model.mass_feature else [])
    else:
        names = ["offered"] if model.match_features else []
    names.append("pred_bias")
    if model.match_counts:
        names += ["ids", "valid"]
        if not (model.use_ia and model.count_weights == "attention"):
            names.append("count_w")
    return names


def split_support(model: nn.Module) -> str | None:
    """None when the split covers `model`, else why not (the engine then serves the single graph)."""
    from dacdr.models.dacdr import DACDR

    if type(model) is not DACDR:
        return f"model {type(model).__name__} is not DACDR (the split covers DACDR and its ablations only)"
    if getattr(model, "match_bonus", None) is not None:
        return "match_bonus (a candidate-dependent prior on step 2) is not folded by the split"
    if getattr(model, "count_weights", None) == "both":
        return "count_weights='both' (two sets of count features) is not folded by the split"
    # a parameter added after the split was written is covered only at its default (a lever left off)
    defaults = {k: p.default for k, p in inspect.signature(type(model).__init__).parameters.items()}
    unknown = sorted(k for k, v in getattr(model, "params", {}).items()
                     if k not in COVERED_PARAMS and (k not in defaults or v != defaults[k]))
    if unknown:
        return f"DACDR parameter(s) {unknown} are not covered by the split"
    spec = model.spec
    n = len(spec.item_fields)
    if model.match_counts and list(spec.sequence_fields[:n]) != list(spec.item_fields):
        return "the sequence's first fields are not the item fields (the count features compare them)"
    if not (isinstance(model.encoder[0], nn.Linear) and isinstance(model.encoder[1], nn.ReLU)
            and isinstance(model.predictor[0], nn.Linear)):
        return "the encoder does not start with linear + ReLU, or the predictor with a linear layer"
    if model.use_ia and model.item_attention is None:
        return "a learnt item-level step without its attention module"
    return None


def _gather_tables(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The item fields' embedding tables stacked into one [sum V, k] table and each field's row offset."""
    tables = [model.embeddings.tables[f].weight.detach() for f in model.spec.item_fields]
    sizes = torch.tensor([0] + [t.shape[0] for t in tables[:-1]], dtype=torch.long)
    return torch.cat(tables), sizes.cumsum(0)


def _cosine(att: nn.Module) -> bool:
    """Whether the step scores by cosine (a learnt per-head scale on unit query maps and unit keys)."""
    return getattr(att, "log_scale", None) is not None


class _Layout:
    """Column offsets of the encoder's and the predictor's inputs, in `DACDR.forward`'s order."""

    def __init__(self, model: nn.Module):
        spec, k = model.spec, model.embeddings.tables[model.spec.item_fields[0]].weight.shape[1]
        n, m = len(spec.item_fields), len(spec.domain_fields)
        att = model.item_attention or model.domain_attention
        self.k, self.n, self.m, self.h = k, n, m, att.heads if att is not None else 1
        # encoder: [E_d (m k); H_d (m k)?; H_i (n k)?; pooled (k)?] (pooled: the dropped pooling ablation's, or
        # `history_mean`'s); H_i is the only candidate-dependent part
        self.enc_hi = m * k + (m * k if model.domain_attention is not None else 0)  # where H_i starts
        # predictor: [user (u); E_i (n k); match (n k)?; log_mass (n)?; hits (2n)?; log_mass_d (m)?]
        u = [mod for mod in model.encoder if isinstance(mod, nn.Linear)][-1].out_features
        cols, at = {}, 0
        for name, width, on in (("user", u, True), ("E_i", n * k, True), ("match", n * k, model.match_features),
                                ("log_mass", n, model.mass_feature), ("hits", 2 * n, model.match_counts),
                                ("log_mass_d", m, model.domain_mass_feature)):
            if on:
                cols[name] = (at, at + width)
                at += width
        self.pred = cols


class UserSide(nn.Module):
    """seq [1, max_len, F], seq_mask [1, max_len], domain [1, m] -> the tensors the candidate side reads."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.lay = model, _Layout(model)
        self.register_buffer("dummy_item", torch.zeros(1, self.lay.n, dtype=torch.long))

    def forward(self, seq: torch.Tensor, seq_mask: torch.Tensor, domain: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model, lay = self.model, self.lay
        n, k, h = lay.n, lay.k, lay.h
        parts = model.attend(seq, seq_mask, self.dummy_item, domain)  # the dummy's step 2 is pruned from the graph
        s = parts["seq"][0]  # [L, k]
        keep = seq_mask[0].to(s.dtype)  # [L]
        s_m = s * keep[:, None]  # masked rows 0: an empty history pools to zeros
        valid = keep.sum().reshape(1)
        enc0 = model.encoder[0]
        enc_in = [parts["E_d"].reshape(-1)]
        if "H_d" in parts:
            enc_in.append(parts["H_d"].reshape(-1))
        out: dict[str, torch.Tensor] = {}
        pred0 = model.predictor[0]
        pred_bias = pred0.bias
        if model.domain_mass_feature:
            a, b = lay.pred["log_mass_d"]
            pred_bias = pred_bias + pred0.weight[:, a:b] @ parts["log_mass_d"][0]
        if model.use_ia:
            # step 2's logits: E_i (Q K^T) + bias, per head: kmat [k, h L], bias [h L]
            keys = s if model.positions is None else s + model.positions(
                recency_index(seq_mask).clamp_max(model.spec.max_len - 1))[0]
            q_map = model.item_attention.query_map().detach()  # [k, h, k]
            out["kmat"] = (q_map @ keys.t()).reshape(k, -1)  # [k, h L]
            if _cosine(model.item_attention):  # cosine scores: the keys enter at unit length
                out["kmat"] = (out["kmat"].view(k, h, -1) / keys.norm(dim=-1).clamp_min(1e-6)).reshape(k, -1)
            bias = torch.zeros_like(keep).masked_fill(~seq_mask[0], -1e9)
            if model.use_da:
                prior = parts["alpha"][0]
                if getattr(model, "prior_logit", None) is not None:  # step 2's prior floored by the uniform one
                    mix = torch.sigmoid(model.prior_logit)
                    prior = (1 - mix) * prior + mix * keep / valid.clamp_min(1.0)
                bias = bias + torch.log(prior.clamp_min(1e-12))
            out["bias"] = bias.repeat(h)
            out["s_m"] = s_m
            out["enc_pre"] = enc0.bias + enc0.weight[:, : lay.enc_hi] @ torch.cat(enc_in)
            if "pooled" in parts:  # the history's mean (`history_mean`) follows H_i in the encoder's input
                hi_end = lay.enc_hi + n * k
                out["enc_pre"] = out["enc_pre"] + enc0.weight[:, hi_end: hi_end + k] @ parts["pooled"].reshape(-1)
            if model.mass_feature:
                # log_mass = top logit - log(top weight) [- log(valid) without a prior], 0 for an empty history
                shift = torch.zeros(1) if model.use_da else torch.log(valid.clamp_min(1.0))
                out["mass"] = torch.cat([shift, (valid > 0).to(s.dtype)])
        else:
            # no learnt item-level step: the allocation is alpha (fixed), the user embedding is user-side
            for key in ("H_i", "pooled"):
                if key in parts:
                    enc_in.append(parts[key].reshape(-1))
            user = model.encoder(torch.cat(enc_in)[None])[0]
            a, b = lay.pred["user"]
            pred_bias = pred_bias + pred0.weight[:, a:b] @ user
            if model.match_features:
                out["offered"] = parts["offered"][0].reshape(-1)  # [n k], the same for every candidate
        out["pred_bias"] = pred_bias
        if model.match_counts:
            ids = seq[0, :, :n].t()  # [n, L]
            out["ids"] = torch.where(seq_mask[0][None] & (ids > OOV), ids, torch.full_like(ids, -1))
            out["valid"] = valid
            if not (model.use_ia and model.count_weights == "attention"):
                # step 2 = alpha without an item-level step; "domain": alpha by choice; "uniform": the plain share
                alpha = (parts["alpha"][0] if model.count_weights in ("attention", "domain")
                         else keep / valid.clamp_min(1.0))
                out["count_w"] = alpha  # [L]: fixed weights of the count features
        return tuple(out[name] for name in user_output_names(model))

class CandidateSide(nn.Module):
    """item [B, n] ids and the user side's tensors -> the raw score [B]."""

    def __init__(self, model: nn.Module, head_mean: bool = True):
        super().__init__()
        self.model, self.lay = model, _Layout(model)
        self.names, self.length = user_output_names(model), model.spec.max_len
        lay = self.lay
        n, k, h = lay.n, lay.k, lay.h
        table, offsets = _gather_tables(model)
        self.register_buffer("table", table)
        self.register_buffer("offsets", offsets)
        enc0, pred0 = model.encoder[0], model.predictor[0]
        self.head_mean = head_mean and model.use_ia
        """the token match as the head mean of the pooled history instead of a block of `wc` that is an
        identity over heads (same values, 43% fewer multiply-adds in that product: docs/serving.md). False: the
        earlier graph, kept for `benchmarks/scoring_path.py --candidate-graph`"""
        if model.use_ia:
            # pooled [n h k] -> [encoder's H_i part (H1) | offered (n k)]
            n_map = model.item_attention.value_map().detach()  # [h, k, k]
            blocks = []
            w_hi = enc0.weight[:, lay.enc_hi: lay.enc_hi + n * k].detach().view(-1, n, k)  # [H1, n, k]
            enc_part = torch.einsum("hdc,ejc->jhde", n_map, w_hi).reshape(n * h * k, -1)  # [(j h d), H1]
            blocks.append(enc_part)
            self.match_mean = self.head_mean and model.match_features and model.match_on == "tokens"
            if model.match_features and not self.match_mean:
                # tokens: the head mean of the pooled tokens; values: H_i itself
                per = torch.eye(k).expand(h, k, k) / h if model.match_on == "tokens" else n_map
                blocks.append(torch.einsum("jJ,hdc->jhdJc", torch.eye(n), per).reshape(n * h * k, n * k))
            self.register_buffer("wc", torch.cat(blocks, dim=1))
            self.h1 = enc_part.shape[1]
            self.cosine = _cosine(model.item_attention)
            if self.cosine:
                self.register_buffer("q_map", model.item_attention.query_map().detach().reshape(k, h * k))
                self.register_buffer("gain", model.item_attention.log_scale.detach().exp())
        # the predictor's first layer on the candidate-dependent columns only (the rest is in pred_bias)
        cols = [c for name, c in lay.pred.items() if name != "log_mass_d" and (name != "user" or model.use_ia)]
        self.register_buffer("w_pred", torch.cat([pred0.weight[:, a:b] for a, b in cols], dim=1).detach().t())

    def forward(self, item: torch.Tensor, *user: torch.Tensor) -> torch.Tensor:
        model, lay = self.model, self.lay
        n, k, h = lay.n, lay.k, lay.h
        u = dict(zip(self.names, user, strict=True))
        e = self.table[item + self.offsets]  # [B, n, k]
        e_flat = e.reshape(-1, n * k)
        pred_in = []
        if model.use_ia:
            if self.cosine:  # each (candidate token, head) query map at unit length, times the head's scale
                qk = (e @ self.q_map).reshape(-1, n, h, k)
                gain = self.gain / qk.norm(dim=-1).clamp_min(1e-6)  # [B, n, h]
                logits = (e @ u["kmat"]).reshape(-1, n, h, self.length) * gain[..., None] + \
                    u["bias"].reshape(h, self.length)
            else:
                logits = (e @ u["kmat"] + u["bias"]).reshape(-1, n, h, self.length)
            a = torch.softmax(logits, dim=-1)  # [B, n, h, L]; masked positions exactly 0
            pooled = a @ u["s_m"]  # [B, n, h, k]
            z = pooled.reshape(-1, n * h * k) @ self.wc  # [B, H1 (+ n k)]
            hidden = torch.relu(z[:, : self.h1] + u["enc_pre"])
            user_emb = model.encoder[2:](hidden)
            pred_in += [user_emb, e_flat]
            if self.match_mean:  # tokens: the head mean of the pooled tokens, as a sum of head slices (ONNX
                # Runtime's reduction over a middle axis measured slower than the products it replaces)
                offered = functools.reduce(torch.add, (pooled[:, :, i] for i in range(h))) * (1.0 / h)
                pred_in.append(offered.reshape(-1, n * k) * e_flat)
            elif model.match_features:
                pred_in.append(z[:, self.h1:] * e_flat)
            if model.mass_feature:
                top = logits.max(dim=-1).values - torch.log(a.max(dim=-1).values)  # [B, n, h]
                pred_in.append((top.mean(-1) - u["mass"][0]) * u["mass"][1])
        else:
            pred_in.append(e_flat)
            if model.match_features:
                pred_in.append(u["offered"] * e_flat)
        if model.match_counts:
            hit = item[:, :, None] == u["ids"]  # [B, n, L]
            if "count_w" in u:
                share = torch.where(hit, u["count_w"], 0.0).sum(-1)
            else:  # step 2's weights, mean over heads
                share = (a * torch.where(hit, 1.0 / h, 0.0)[:, :, None, :]).sum((2, 3))
            pred_in += [share, torch.log1p(share * u["valid"])]
        x = torch.cat(pred_in, dim=1) @ self.w_pred + u["pred_bias"]
        return model.predictor[1:](x).reshape(-1)


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], outputs: list[str],
            axes: dict[str, dict[int, str]]) -> bytes:
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(module, args, buf, dynamo=False, input_names=names, output_names=outputs,
                          dynamic_axes=axes, opset_version=ONNX_OPSET, do_constant_folding=True)
    return buf.getvalue()


def split_onnx_bytes(model: nn.Module, head_mean: bool = True) -> tuple[bytes, bytes, list[str]]:
    """(user-side graph, candidate-side graph, the user side's output names = the candidate side's inputs
    after `item`). The user side takes `seq`, `seq_mask`, `domain` of one user padded to `max_len`;
    `head_mean=False` builds the earlier candidate graph (`CandidateSide`)."""
    reason = split_support(model)
    if reason is not None:
        raise ValueError(f"no split graph: {reason}")
    model.eval()
    spec = model.spec
    length = spec.max_len
    user_mod, cand_mod = UserSide(model).eval(), CandidateSide(model, head_mean).eval()
    seq = torch.zeros(1, length, len(spec.sequence_fields), dtype=torch.long)
    mask = torch.ones(1, length, dtype=torch.bool)
    domain = torch.zeros(1, len(spec.domain_fields), dtype=torch.long)
    names = user_output_names(model)
    user_graph = _export(user_mod, (seq, mask, domain), list(USER_INPUTS), names, {})
    with torch.no_grad():
        user_out = user_mod(seq, mask, domain)
    item = torch.zeros(2, len(spec.item_fields), dtype=torch.long)
    cand_graph = _export(cand_mod, (item, *user_out), ["item", *names], ["score"],
                         {"item": {0: "batch"}, "score": {0: "batch"}})
    return user_graph, cand_graph, names
