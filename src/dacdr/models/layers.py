"""Building blocks shared by the models: field embeddings, masked cross-attention, MLPs."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

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

    def item_ids(self, seq: torch.Tensor, item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids a model compares (sequence [B, L, F], candidate [B, n]): here the inputs themselves; sharded
        tables (dacdr.distributed.sharded) feed embeddings instead and hand the ids over separately."""
        return seq, item

    def domain_ids(self, domain: torch.Tensor) -> torch.Tensor:
        """The domain fields' ids [B, m] (here the input itself; sharded tables hand them over separately)."""
        return domain

    def sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, L, F] ids -> [B, L, k], the sum of the fields' embeddings of each behaviour."""
        out = self.tables[self.spec.sequence_fields[0]](seq[..., 0])
        for j, f in enumerate(self.spec.sequence_fields[1:], start=1):
            out = out + self.tables[f](seq[..., j])
        return out


def _common_dtype(grad: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Under autocast the forward product ran in a lower precision than its saved inputs: the backward runs
    in the inputs' common dtype (autograd casts each gradient back to its input's dtype)."""
    dtype = torch.promote_types(a.dtype, s.dtype)
    return grad.to(dtype).contiguous(), a.to(dtype), s.to(dtype)


class _ScoresOver(torch.autograd.Function):
    """``a @ s^T``: a few rows a [B, J, k] scored against a long sequence s [B, L, k] -> [B, J, L].

    Autograd's own backward of this product returns the sequence's gradient as a transposed view, and both
    computing it that way and adding it into the sequence's other gradients take several times the product
    itself; here it comes out contiguous [B, L, k] from one product with the (small) scores' gradient."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, s)
        return a @ s.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        a, s = ctx.saved_tensors
        grad, a, s = _common_dtype(grad, a, s)
        grad_a = (grad @ s).sum_to_size(a.shape) if ctx.needs_input_grad[0] else None
        grad_s = (grad.transpose(1, 2).contiguous() @ a).sum_to_size(s.shape) if ctx.needs_input_grad[1] else None
        return grad_a, grad_s


class _PoolOver(torch.autograd.Function):
    """``w @ s``: weights w [B, J, L] over a long sequence s [B, L, k] -> [B, J, k], with the sequence's gradient
    from w transposed into a contiguous copy first (the strided product autograd would take is slow)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w, s)
        return w @ s

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        w, s = ctx.saved_tensors
        grad, w, s = _common_dtype(grad, w, s)
        grad_w = (grad @ s.transpose(1, 2)).sum_to_size(w.shape) if ctx.needs_input_grad[0] else None
        grad_s = (w.transpose(1, 2).contiguous() @ grad).sum_to_size(s.shape) if ctx.needs_input_grad[1] else None
        return grad_w, grad_s


def plain_graph() -> bool:
    """Tracing (ONNX, TorchScript) or no gradient: the plain products, which every exporter knows."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or not torch.is_grad_enabled()


def scores_over(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``a @ s.transpose(1, 2)`` for a few rows a [B, J, k] and a sequence s [B or 1, L, k] -> [B, J, L]."""
    return a @ s.transpose(1, 2) if plain_graph() else _ScoresOver.apply(a, s)


def pool_over(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``w @ s`` for weights w [B, J, L] and a sequence s [B or 1, L, k] -> [B, J, k]."""
    return w @ s if plain_graph() else _PoolOver.apply(w, s)


class CrossAttention(nn.Module):
    """Multi-head masked cross-attention with an optional log-prior on the keys.

    ``softmax(Q W_Q (K W_K)^T / (sqrt(k_h) * temperature) + log prior) V W_V W_O``; a query whose keys are all
    masked returns zeros and zero weights, never NaN. With ``scores=False`` the module has only its value path
    (``W_V``, ``W_O``) and is given its weights (an ablation that replaces a learnt allocation by a fixed one).
    ``value_init="identity"`` starts ``W_V`` and ``W_O`` at the identity, so that the output starts as the
    attention-weighted mean of the keys themselves instead of a random rotation of it. ``score="cosine"`` scores
    a key by the cosine between the query's map and the key, times a learnt per-head scale (initialised at
    ``cosine_scale``; query-key normalisation): the scores' size no longer grows only with the embeddings'.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 2,
        scores: bool = True,
        temperature: float = 1.0,
        value_init: str = "random",
        score: str = "dot",
        cosine_scale: float = 10.0,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dim {dim} is not divisible by heads {heads}")
        if temperature <= 0:
            raise ValueError(f"attention temperature must be > 0, got {temperature}")
        self.heads, self.head_dim = heads, dim // heads
        self.scale = 1.0 / (math.sqrt(self.head_dim) * temperature)
        self.w_q = nn.Linear(dim, dim, bias=False) if scores else None
        self.w_k = nn.Linear(dim, dim, bias=False) if scores else None
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.w_o = nn.Linear(dim, dim, bias=False)
        if score not in ("dot", "cosine"):
            raise ValueError(f"unknown attention score {score!r}: expected 'dot' or 'cosine'")
        if score == "cosine" and scores:
            self.log_scale = nn.Parameter(torch.full((heads,), math.log(cosine_scale)))
        else:
            self.register_parameter("log_scale", None)
        if value_init == "identity":
            nn.init.eye_(self.w_v.weight)
            nn.init.eye_(self.w_o.weight)
        elif value_init != "random":
            raise ValueError(f"unknown value_init {value_init!r}: expected 'random' or 'identity'")

    def weights(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
        log_prior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention weights [B, h, m, L] of query [B, m, k] over keys [B (or 1), L, k]; zero on masked keys."""
        return self._weights(query, keys, mask, log_prior, with_mass=False)[0]

    def weights_and_mass(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
        log_prior: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights and the log of their normaliser relative to uniform scores, [B, h, m]: 0 when every
        key scores the same, large when a few keys score high. The softmax divides it out, and with it how many
        behaviours matched the query (DIN keeps it by not normalising); a model may feed it back. 0 for an
        empty history."""
        return self._weights(query, keys, mask, log_prior, with_mass=True)

    def _weights(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
        log_prior: torch.Tensor | None,
        with_mass: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = scores_over(self.query_rows(query), keys)  # [B, m h, L]; keys of batch 1 broadcast
        return self.weights_from_scores(logits, keys, mask, log_prior, with_mass)

    def query_rows(self, query: torch.Tensor) -> torch.Tensor:
        """[B, m, k] queries -> [B, m h, k] rows (query, head) to take against the raw keys (`scores_over`)."""
        b, m, k = query.shape
        h = self.heads
        # q_h . (W_K,h s_l) == (query M_h) . s_l with M_h = W_Q,h^T W_K,h [k, k]: the projections are absorbed
        # into the m queries and the logits are taken against the raw keys, so the B x L x k sequence is never
        # projected (the textbook form's weights up to float rounding: tests/models/test_attention_parity.py).
        qk = (query @ self.query_map().reshape(k, h * k)).view(b, m * h, k)  # rows (query, head)
        if self.log_scale is not None:  # cosine: unit query maps (times the head's scale) against unit keys
            gain = self.log_scale.exp().repeat(m)[:, None]  # rows (query, head): head fastest
            qk = qk * (gain / qk.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        return qk

    def query_map(self) -> torch.Tensor:
        """[k, h, k]: per head, ``M_h = W_Q,h^T W_K,h`` times the softmax scale (``query @ M_h`` is taken against
        the raw keys)."""
        if self.w_q is None or self.w_k is None:
            raise RuntimeError("this attention has no scoring path (scores=False): pass its weights")
        k, h = self.w_q.weight.shape[1], self.heads
        w_q, w_k = self.w_q.weight.view(h, self.head_dim, k), self.w_k.weight.view(h, self.head_dim, k)
        return (w_q.transpose(1, 2) @ w_k * self.scale).transpose(0, 1)

    def value_map(self) -> torch.Tensor:
        """[h, k, k]: per head, ``N_h = (W_O,h W_V,h)^T`` (a weighted mean of the raw tokens times N_h is the
        head's output)."""
        k, h = self.w_v.weight.shape[1], self.heads
        w_v, w_o = self.w_v.weight.view(h, self.head_dim, k), self.w_o.weight.view(k, h, self.head_dim)
        return (w_o.transpose(0, 1) @ w_v).transpose(1, 2)

    def weights_from_scores(
        self,
        logits: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
        log_prior: torch.Tensor | None,
        with_mass: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weights [B, h, m, L] (and the log-mass) from `scores_over(query_rows(query), keys)` [B, m h, L]."""
        h = self.heads
        m = logits.shape[1] // h
        if self.log_scale is not None:
            logits = logits / keys.norm(dim=-1).clamp_min(1e-6)[:, None, :]
        logits = logits.view(logits.shape[0], m, h, logits.shape[2]).transpose(1, 2)  # [B, h, m, L] (a view)
        # masked keys get -1e9 added (a masked_fill costs a pass more, forward and backward); the prior rides along
        bias = torch.zeros_like(mask, dtype=logits.dtype).masked_fill(~mask, _MASKED)
        if log_prior is not None:
            bias = bias + log_prior
        logits = logits + bias[:, None, None, :]
        soft = torch.softmax(logits, dim=-1)
        keep = mask[:, None, None, :].to(logits.dtype)
        weights = soft * keep  # a query with no valid key: zeros, not the softmax's uniform row
        if not with_mass:
            return weights, None
        # log sum_l prior_l e^score_l = top logit - log(its softmax weight), a weight in [1/L, 1]: the same
        # value and gradient as logsumexp without a second exp over the logits (exp is slow on the masked -1e9)
        top, at = logits.max(dim=-1, keepdim=True)
        log_mass = (top - torch.log(soft.gather(-1, at))).squeeze(-1)
        # without a prior the prior is uniform, 1 / (valid keys)
        valid = keep.sum(-1)
        if log_prior is None:
            log_mass = log_mass - torch.log(valid.clamp_min(1.0))
        return weights, torch.where(valid > 0, log_mass, torch.zeros_like(log_mass))

    @staticmethod
    def rows(weights: torch.Tensor) -> torch.Tensor:
        """weights [B, hw, m, L] -> contiguous rows (query, head) [B, m hw, L] for `pool_over`."""
        b, hw, m, n = weights.shape
        # contiguous: weights expanded over the queries (stride 0) send bmm down a slow per-sample loop
        return weights.transpose(1, 2).reshape(b, m * hw, n).contiguous()

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """The weighted means of the raw tokens, [B, m, hw, k] (hw = 1: one mean serves every head), through
        the value map: -> [B, m, k]."""
        b, m, _, k = pooled.shape
        h = self.heads
        v_map = self.value_map()
        # one allocation for every head (hw = 1): its average serves each head (no branch: traces stay general)
        return pooled.expand(-1, -1, h, -1).reshape(b, m, h * k) @ v_map.reshape(h * k, k)

    def values(self, weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``(weights V W_V) W_O``: weights [B, h or 1, m, L], values [B (or 1), L, k] -> [B, m, k]."""
        # A (S W_V,h^T) W_O,h^T == (A S) N_h with N_h = (W_O,h W_V,h)^T [k, k]: the raw tokens are averaged first
        # and only the m averages are projected, so the B x L x k sequence never is; batch-1 values broadcast
        # against B weights. Rows (query, head) so that the heads' averages sit side by side for one product.
        pooled = pool_over(self.rows(weights), values)  # [B, m hw, k]
        return self.project(pooled.view(pooled.shape[0], weights.shape[2], weights.shape[1], values.shape[-1]))

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
        log_prior: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query [B, m, k], keys [B, L, k], mask [B, L] bool, log_prior [B, L] -> ([B, m, k], [B, h, m, L]).

        ``values`` (default: the keys) are what is averaged, e.g. the tokens without a position code."""
        weights = self.weights(query, keys, mask, log_prior)
        return self.values(weights, keys if values is None else values), weights


def mlp(sizes: list[int], dropout: float = 0.0, last_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def uniform_weights(mask: torch.Tensor) -> torch.Tensor:
    """[B, L] mask -> [B, 1, 1, L]: equal weight on every valid position, zeros for an empty sequence."""
    w = mask.to(torch.float32)
    return (w / w.sum(1, keepdim=True).clamp_min(1.0))[:, None, None, :]


def recency_index(mask: torch.Tensor) -> torch.Tensor:
    """[B, L] mask -> [B, L] long: how many valid positions come after each one (0 = the most recent)."""
    after = mask.flip(1).to(torch.long).cumsum(1).flip(1) - 1
    return after.clamp_min(0)


def masked_mean(seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of [B, L, k] over unmasked positions; zeros for an empty sequence."""
    w = mask.to(seq.dtype).unsqueeze(-1)
    return (seq * w).sum(1) / w.sum(1).clamp_min(1.0)



class _TwoStepAttention(torch.autograd.Function):
    """Both DACDR steps' scores, weights and weighted means over one sequence, with a hand-written backward.

    Inputs: q [B, J, k], the query rows (query, head) of step 1 (the first ``md``) then of step 2, with the scale
    and temperature in them (`CrossAttention.query_rows`); s [B, L, k], the sequence (keys and values); keep [B, L]
    the float mask and bias [B, L] the additive one (-1e9 on masked keys), built once per batch; uniform [B, L],
    the uniform allocation; mix, the prior floor's share (None: step 2's prior is step 1's allocation itself);
    bias_d [B, L] or None, an additive term of step 1's logits (`DACDR`'s domain prior); mean, whether to add the
    history's masked mean (the uniform allocation's) as one more row of the means (`DACDR`'s `history_mean`): its
    gradient then joins the sequence's inside the same product instead of a pass of its own.
    Outputs: the weighted means [B, J, k] of every row ([B, J + 1, k] with ``mean``, the mean last), the weights in
    rows [B, J, L] (zero on masked keys), step 1's allocation alpha [B, L], and the log-masses [B, J] of step 1's /
    step 2's rows when asked (else None).

    The maths of `CrossAttention.weights_from_scores` applied step by step (tests/models/test_attention_parity.py):
    ``softmax(scores + bias)`` per row, step 2 with the floored log prior added. Autograd's graph of that is a few
    dozen small ops over [B, J, L] (the slices and their zero-filled gradients, the mask's products, the rows'
    copies, the broadcast sums) and two products with the sequence for its gradient; here each step's backward is
    one pass, ``dX = P (dP - sum(P dP) + d log-mass)``, and the sequence's gradient from the scores and the means
    is accumulated inside the second product (``baddbmm_``) instead of summed over ``B x L x k`` after it.
    """

    @staticmethod
    def forward(ctx, q, s, keep, bias, uniform, mix, md: int, mass_d: bool, mass_i: bool, bias_d=None,
                mean: bool = False):
        logits = q @ s.transpose(1, 2)  # [B, J, L], rows (query, head); this function's own buffer
        logits.add_(bias[:, None, :])
        if bias_d is not None:  # step 1's own additive term (the domain prior), on its rows only
            logits[:, :md].add_(bias_d[:, None, :])
        w = torch.empty_like(logits)
        soft_d = torch.softmax(logits[:, :md], dim=-1)
        torch.mul(soft_d, keep[:, None, :], out=w[:, :md])  # an empty history: zeros, not the uniform row
        alpha = w[:, :md].mean(1)  # over heads and domain tokens
        prior = alpha if mix is None else (1 - mix) * alpha + mix * uniform
        x_i = logits[:, md:]
        x_i.add_(torch.log(prior.clamp_min(1e-12))[:, None, :])
        soft_i = torch.softmax(x_i, dim=-1)
        torch.mul(soft_i, keep[:, None, :], out=w[:, md:])
        rows = torch.cat([w, uniform[:, None, :]], dim=1) if mean else w  # [B, J (+ 1), L]
        pooled = rows @ s
        valid = keep.sum(-1, keepdim=True)  # [B, 1]
        log_mass_d = log_mass_i = None
        # log sum_l e^x_l = top - log(the top's softmax weight), as `weights_from_scores`; no prior: uniform's
        if mass_d:
            lm = logits[:, :md].amax(-1) - torch.log(soft_d.amax(-1)) - torch.log(valid.clamp_min(1.0))
            log_mass_d = torch.where(valid > 0, lm, torch.zeros_like(lm))
        if mass_i:
            lm = x_i.amax(-1) - torch.log(soft_i.amax(-1))
            log_mass_i = torch.where(valid > 0, lm, torch.zeros_like(lm))
        ctx.md = md
        ctx.save_for_backward(q, s, keep, uniform, mix, soft_d, soft_i, w, alpha, prior, rows)
        return pooled, w, alpha, log_mass_d, log_mass_i

    @staticmethod
    @once_differentiable  # a gradient of this gradient would need its own derivation: refuse it plainly
    def backward(ctx, g_pooled, g_w, g_alpha, g_mass_d, g_mass_i):
        q, s, keep, uniform, mix, soft_d, soft_i, w, alpha, prior, rows = ctx.saved_tensors
        md, j = ctx.md, w.shape[1]
        k = keep[:, None, :]
        # the weights' gradient: from the means (one product; the history mean's row has fixed weights) and from the
        # weights themselves
        g = g_pooled[:, :j] @ s.transpose(1, 2) if g_pooled is not None else torch.zeros_like(w)
        if g_w is not None:
            g = g + g_w
        valid = (keep.sum(-1, keepdim=True) > 0).to(keep.dtype)  # [B, 1]: an empty history has no log-mass
        g_x = torch.empty_like(g)
        # step 2: dX = P (dP - sum(P dP) + d log-mass), dP = dW * keep
        g_p = g[:, md:] * k
        g_p -= (soft_i * g_p).sum(-1, keepdim=True)
        if g_mass_i is not None:
            g_p += (g_mass_i * valid)[:, :, None]
        torch.mul(soft_i, g_p, out=g_x[:, md:])
        # through the log prior to step 1's allocation (and the floor's share)
        g_prior = g_x[:, md:].sum(1) * (prior >= 1e-12) / prior.clamp_min(1e-12)
        g_mix = None
        if mix is not None:
            g_mix = (g_prior * (uniform - alpha)).sum().reshape(mix.shape) if ctx.needs_input_grad[5] else None
            g_prior = g_prior * (1 - mix)
        if g_alpha is not None:
            g_prior = g_prior + g_alpha
        # step 1: alpha is the mean of its rows
        g_p = g[:, :md].add_(g_prior[:, None, :], alpha=1.0 / md) * k  # g is this function's own buffer
        g_p -= (soft_d * g_p).sum(-1, keepdim=True)
        if g_mass_d is not None:
            g_p += (g_mass_d * valid)[:, :, None]
        torch.mul(soft_d, g_p, out=g_x[:, :md])
        g_q = g_x @ s if ctx.needs_input_grad[0] else None
        g_s = None
        if ctx.needs_input_grad[1]:  # both uses of the sequence: dX^T q + W^T (d means), summed inside the product
            g_s = g_x.transpose(1, 2) @ q
            if g_pooled is not None:
                g_s.baddbmm_(rows.transpose(1, 2), g_pooled)
        # step 1's additive term was added to each of its rows: its gradient is their sum
        g_bias_d = g_x[:, :md].sum(1) if ctx.needs_input_grad[9] else None
        return g_q, g_s, None, None, None, g_mix, None, None, None, g_bias_d, None


def two_step_attention(
    q: torch.Tensor,
    s: torch.Tensor,
    mask: torch.Tensor,
    mix: torch.Tensor | None,
    md: int,
    mass_d: bool = False,
    mass_i: bool = False,
    bias_d: torch.Tensor | None = None,
    mean: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """`_TwoStepAttention` with the masks built once for the batch: q [B, J, k] query rows (step 1's first md),
    s [B, L, k], mask [B, L] bool, mix the prior floor's share or None, bias_d [B, L] an additive term of step 1's
    logits or None, mean: add the history's masked mean as a last row of the means -> (means [B, J (+ 1), k],
    weights [B, J, L], alpha [B, L], log-masses [B, md] / [B, J - md] or None)."""
    keep = mask.to(s.dtype)
    bias = (1.0 - keep) * _MASKED
    uniform = keep / keep.sum(1, keepdim=True).clamp_min(1.0)  # `uniform_weights`, in the sequence's dtype
    return _TwoStepAttention.apply(q, s, keep, bias, uniform, mix, md, mass_d, mass_i, bias_d, mean)
