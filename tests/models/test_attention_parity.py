"""CrossAttention's fast form (W_K absorbed into the queries, W_V applied after the weighted mean) against the
textbook form kept here: the same weights, log-masses, outputs and gradients for every DACDR variant and option.

The reference below is the implementation as it stood before the change (dacdr 0.2): it projects the whole
``B x L x k`` sequence through ``W_K`` and ``W_V``. Both are linear maps, so the fast form is the same function;
only the order of the float sums differs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dacdr.data.batches import BatchGatherer
from dacdr.models import create_model
from dacdr.models.attention_reference import TEXTBOOK_METHODS
from dacdr.models.dacdr import DACDR
from dacdr.models.layers import CrossAttention

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture
def reference(monkeypatch):
    """Call it to switch CrossAttention to the textbook form for the rest of the test."""

    def use() -> None:
        for name, method in TEXTBOOK_METHODS.items():
            monkeypatch.setattr(CrossAttention, name, method)
        monkeypatch.setattr(DACDR, "fuse_steps", False)  # the steps one by one, through the textbook methods

    return use


def _peaky(module: torch.nn.Module, seed: int) -> None:
    """Random weights large enough for sharp attention: near-uniform weights would hide a wrong score path."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.4 if p.ndim > 1 else 0.1))


def _inputs(b: int, m: int, length: int, k: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(b, m, k, generator=gen)
    keys = torch.randn(b, length, k, generator=gen)
    mask = torch.rand(b, length, generator=gen) < 0.6
    mask[0] = True  # a full history
    mask[1] = False  # an empty one: zeros, never NaN
    prior = torch.softmax(torch.randn(b, length, generator=gen) * 2, -1).clamp_min(1e-12).log()
    return query, keys, mask, prior


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype = torch.float32, what: str = "") -> None:
    """Equal up to float noise, relative to the tensor's scale (a parameter's gradient sums many terms)."""
    atol, rtol = (ATOL, RTOL) if dtype == torch.float32 else (1e-10, 1e-9)
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(got, want, atol=atol * scale, rtol=rtol, msg=lambda s: f"{what}: {s}")


def _run(att, query, keys, mask, prior, values, weights_in):
    """Every path of the module, and the gradients of a fixed random projection of its outputs."""
    leaves = [t.detach().requires_grad_() for t in (query, keys, values, weights_in)]
    q, kk, v, w_in = leaves
    outs = []
    if att.w_q is not None:
        w, mass = att.weights_and_mass(q, kk, mask, prior)
        outs += [w, mass, att.weights(q, kk, mask), att.values(w, v)]
        outs += list(att(q, kk, mask, prior, values=v))
    outs.append(att.values(w_in, v))
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)
    att.zero_grad()
    loss.backward()
    grads = [t.grad for t in leaves] + [p.grad for p in att.parameters()]
    return [o.detach() for o in outs], grads


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("scores", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.3])
@pytest.mark.parametrize("broadcast", ["none", "keys", "query"])
@pytest.mark.parametrize("weight_heads", ["heads", "one"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_attention_matches_the_textbook_form(heads, scores, temperature, broadcast, weight_heads, dtype,
                                                    reference):
    """Outputs and gradients (inputs and parameters) with masks, empty rows, a log prior, keys of batch 1
    against B queries (serving) and the reverse, and weights shared by every head (a fixed allocation).
    In float64 the two forms agree to 1e-10 (the algebra); in float32 to float noise."""
    k, b, m, length = 8, 5, 3, 7
    att = CrossAttention(k, heads=heads, scores=scores, temperature=temperature)
    _peaky(att, seed=heads)
    att.to(dtype)
    query, keys, mask, prior = (t.to(dtype) if t.is_floating_point() else t
                                for t in _inputs(b, m, length, k, seed=heads))
    values = keys + 0.5
    if broadcast == "keys":  # one user's history against B candidate queries
        keys, values, mask, prior = keys[:1], values[:1], mask[:1], prior[:1]
    elif broadcast == "query":
        query = query[:1]
    hw = heads if weight_heads == "heads" else 1
    # B given weights against values of batch 1 when broadcasting, as a step's weights meet one user's history
    weights_in = torch.softmax(torch.randn(b, hw, m, length, dtype=dtype), -1) * mask[:, None, None, :]
    fast = _run(att, query, keys, mask, prior, values, weights_in)
    reference()
    ref = _run(att, query, keys, mask, prior, values, weights_in)
    for got, want in zip(fast[0] + fast[1], ref[0] + ref[1], strict=True):
        if want is None:  # an input the module does not use without scores (query, keys)
            assert got is None and not scores
            continue
        assert torch.isfinite(got).all()
        _close(got, want, dtype)
    if scores:  # the empty history: zero weights, zero output, zero log-mass
        w, mass, *_ = fast[0]
        empty = 1 if broadcast != "keys" else None
        if empty is not None:
            assert torch.all(w[empty] == 0) and torch.all(mass[empty] == 0)


DACDR_CASES = [
    ("DACDR", {}),
    ("DACDR w/o DA", {}),
    ("DACDR w/o IA", {}),
    ("DACDR w/o DA&IA", {}),
    ("DACDR (paper)", {}),
    ("DACDR", {"ablation": "drop"}),
    ("DACDR w/o DA", {"ablation": "drop", "match_on": "values"}),
    ("DACDR w/o IA", {"ablation": "drop", "match_on": "values"}),
    ("DACDR w/o DA&IA", {"ablation": "drop", "match_on": "values"}),
    ("DACDR w/o DA&IA", {"ablation": "drop"}),
    ("DACDR", {"match_on": "values"}),
    ("DACDR", {"value_init": "identity", "position_keys": True}),
    ("DACDR", {"temperature": 0.3, "mass_feature": True}),
    ("DACDR w/o DA", {"mass_feature": True, "position_keys": True}),
    ("DACDR", {"heads": 4, "match_features": False}),
    ("DACDR", {"match_counts": True, "domain_mass_feature": True}),
    ("DACDR", {"match_counts": False}),
    ("DACDR w/o DA", {"count_weights": "uniform"}),
    ("DACDR w/o IA", {"domain_mass_feature": True, "mass_feature": True}),
    ("DACDR", {"heads": 1}),
    ("DACDR", {"temperature": 1.0, "prior_floor": False}),  # 0.3's steps (the textbook form has no cosine scores)
]


@pytest.fixture(scope="module")
def batch(handmade_prepared):
    b = BatchGatherer(handmade_prepared).gather(np.arange(0, handmade_prepared.n_samples, 3))
    b["seq_mask"][:3] = False  # cold users with no history at all
    b["seq"][:3] = 0
    return b


def _model_outputs(model, batch):
    """Scores, the attention internals, and every parameter's gradient of a random projection of those internals;
    and one user's history against many candidates with batch-1 user inputs, as serving calls it. (The score's
    own gradient is left out: a ReLU input within float noise of 0 flips it in either form.)"""
    model.zero_grad()
    parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
    gen = torch.Generator().manual_seed(3)
    sum((parts[k] * torch.randn(parts[k].shape, generator=gen)).sum() for k in sorted(parts)).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    row = int(batch["seq_mask"].sum(1).argmax())
    with torch.no_grad():
        score = model.score(batch)
        served = model(batch["seq"][row : row + 1], batch["seq_mask"][row : row + 1], batch["item"],
                       batch["domain"][row : row + 1])
    return {"score": score, "served": served, **{k: v.detach() for k, v in parts.items()}}, grads


@pytest.mark.parametrize("params", [{}, {"domain_mass_feature": True, "position_keys": True},
                                    {"attention_score": "cosine", "heads": 4}, {"match_on": "values"}])
def test_fused_steps_equal_the_steps_one_by_one(params, handmade_prepared, batch, monkeypatch):
    """Training takes both steps' sequence products in one pass each; outputs and gradients are the step-by-step
    ones."""
    torch.manual_seed(0)
    model = create_model("DACDR", handmade_prepared.spec, **params)
    for part in (model.embeddings, model.positions, model.domain_attention, model.item_attention):
        if part is not None:
            _peaky(part, seed=2)
    fused_out, fused_grads = _model_outputs(model, batch)
    monkeypatch.setattr(DACDR, "fuse_steps", False)
    plain_out, plain_grads = _model_outputs(model, batch)
    assert fused_out.keys() == plain_out.keys() and fused_grads.keys() == plain_grads.keys()
    for key in plain_out:
        _close(fused_out[key], plain_out[key], what=key)
    for key in plain_grads:
        _close(fused_grads[key], plain_grads[key], what=f"grad {key}")


@pytest.mark.parametrize(("name", "params"), DACDR_CASES)
def test_dacdr_matches_the_textbook_attention(name, params, handmade_prepared, batch, reference):
    """The same parameters, outputs, attention weights and gradients with either attention form."""
    torch.manual_seed(0)
    model = create_model(name, handmade_prepared.spec, **params)
    for part in (model.embeddings, model.positions, model.domain_attention, model.item_attention):
        if part is not None:  # sharp attention; the MLPs keep their initialisation
            _peaky(part, seed=1)
    keys = list(model.state_dict())
    fast_out, fast_grads = _model_outputs(model, batch)
    reference()
    ref_out, ref_grads = _model_outputs(model, batch)
    assert list(model.state_dict()) == keys
    assert fast_out.keys() == ref_out.keys() and fast_grads.keys() == ref_grads.keys()
    assert {n.split(".")[0] for n in ref_grads} >= {"embeddings"}
    for key in ref_out:
        assert torch.isfinite(fast_out[key]).all(), key
        _close(fast_out[key], ref_out[key], what=key)
    for key in ref_grads:
        assert torch.isfinite(fast_grads[key]).all(), key
        _close(fast_grads[key], ref_grads[key], what=f"grad {key}")
    empty = ~batch["seq_mask"].any(1)
    if "A_i" in fast_out:
        assert torch.all(fast_out["A_i"][empty] == 0)


def _two_step_textbook(q, s, mask, mix, md, mass_d, mass_i):
    """Both steps as autograd ops, the textbook way (masked_fill, softmax, logsumexp): the reference for
    layers.two_step_attention."""
    keep = mask[:, None, :]
    logits = (q @ s.transpose(1, 2)).masked_fill(~keep, -1e9)
    w_d = torch.softmax(logits[:, :md], -1) * keep
    alpha = w_d.mean(1)
    uniform = mask.to(s.dtype) / mask.sum(1, keepdim=True).clamp_min(1)
    prior = alpha if mix is None else (1 - mix) * alpha + mix * uniform
    x_i = logits[:, md:] + torch.log(prior.clamp_min(1e-12))[:, None, :]
    w_i = torch.softmax(x_i, -1) * keep
    w = torch.cat([w_d, w_i], dim=1)
    valid = mask.sum(1, keepdim=True) > 0
    lm_d = torch.logsumexp(logits[:, :md], -1) - torch.log(mask.to(s.dtype).sum(1, keepdim=True).clamp_min(1))
    lm_i = torch.logsumexp(x_i, -1)
    return (w @ s, w, alpha, torch.where(valid, lm_d, 0.0) if mass_d else None,
            torch.where(valid, lm_i, 0.0) if mass_i else None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("floor", [True, False])
@pytest.mark.parametrize("mass", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("sharpness", [1.0, 4.0])  # 4: as temperature 0.25 scales the scores
def test_two_step_attention_matches_autograd(dtype, floor, mass, sharpness):
    """The one-function scoring of both steps (a hand-written backward) against the same maths as plain autograd
    ops: outputs, log-masses and the gradients of the query rows, the sequence and the prior floor's share, with
    full, padded and empty histories. Float64: to 1e-10 (the algebra); float32: float noise."""
    from dacdr.models.layers import two_step_attention

    b, length, k, md, mn = 6, 9, 8, 6, 4
    gen = torch.Generator().manual_seed(int(sharpness) + 10 * floor)
    q = (torch.randn(b, md + mn, k, generator=gen) * sharpness).to(dtype)
    s = torch.randn(b, length, k, generator=gen).to(dtype)
    mask = torch.rand(b, length, generator=gen) < 0.6
    mask[0], mask[1], mask[2, :-1] = True, False, False  # full, empty, one behaviour
    logit = torch.tensor(-1.0, dtype=dtype)
    results = []
    for fn in (two_step_attention, _two_step_textbook):
        leaves = [t.detach().requires_grad_() for t in (q, s, logit)]
        mix = torch.sigmoid(leaves[2]) if floor else None
        outs = fn(leaves[0], leaves[1], mask, mix, md, *mass)
        gen = torch.Generator().manual_seed(5)
        kept = [o for o in outs if o is not None]
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=dtype)).sum() for o in kept)
        loss.backward()
        results.append(([o.detach() for o in kept], [t.grad for t in leaves]))
    (got, got_g), (want, want_g) = results
    assert len(got) == len(want) == 3 + sum(mass)
    for a, w in zip(got, want, strict=True):
        assert torch.isfinite(a).all()
        _close(a, w, dtype)
    for a, w in zip(got_g, want_g, strict=True):
        if w is None:  # no floor: its share has no gradient
            assert a is None and not floor
            continue
        _close(a, w, dtype)
    pooled, w, alpha = got[:3]
    assert torch.all(w[1] == 0) and torch.all(pooled[1] == 0) and torch.all(alpha[1] == 0)  # the empty history
    assert torch.all(w[:, :, ~mask[0]] == 0) if not mask[0].all() else True
    assert torch.all(w.masked_select(~mask[:, None, :].expand_as(w)) == 0)  # padding: zero weight


def scoring_paths_agree(model, batch, monkeypatch) -> dict[str, torch.Tensor]:
    """Training's one-function scoring (taken once), autograd's graph of the fused steps and the steps one by one
    give the same outputs and every parameter's gradient; returns the first path's gradients."""
    import dacdr.models.dacdr as dacdr_module

    calls = []
    real = dacdr_module.two_step_attention
    monkeypatch.setattr(dacdr_module, "two_step_attention", lambda *a: calls.append(1) or real(*a))
    core_out, core_grads = _model_outputs(model, batch)
    assert calls, "the one-function path was not taken"
    monkeypatch.setattr(DACDR, "fused_core", False)
    graph_out, graph_grads = _model_outputs(model, batch)
    monkeypatch.setattr(DACDR, "fuse_steps", False)
    step_out, step_grads = _model_outputs(model, batch)
    assert len(calls) == 1
    for other_out, other_grads in ((graph_out, graph_grads), (step_out, step_grads)):
        assert core_out.keys() == other_out.keys() and core_grads.keys() == other_grads.keys()
        for key in other_out:
            assert torch.isfinite(core_out[key]).all(), key
            _close(core_out[key], other_out[key], what=key)
        for key in other_grads:
            _close(core_grads[key], other_grads[key], what=f"grad {key}")
    return core_grads


@pytest.mark.parametrize("params", [{}, {"temperature": 1.0, "prior_floor": False}, {"temperature": 0.3},
                                    {"mass_feature": True, "domain_mass_feature": True}, {"heads": 4},
                                    {"match_on": "values", "match_counts": False}, {"history_mean": False}])
def test_fused_scoring_equals_the_graph_and_the_steps(params, handmade_prepared, batch, monkeypatch):
    """Training's one-function scoring of both steps (DACDR.fused_core) against autograd's graph of the same fused
    steps and against the steps one by one: the same outputs and every parameter's gradient (the batch has
    empty histories and padded rows)."""
    torch.manual_seed(0)
    model = create_model("DACDR", handmade_prepared.spec, **params)
    for part in (model.embeddings, model.domain_attention, model.item_attention):
        _peaky(part, seed=4)
    if model.prior_logit is not None:
        with torch.no_grad():
            model.prior_logit.fill_(-0.5)
    core_grads = scoring_paths_agree(model, batch, monkeypatch)
    if model.prior_logit is not None:
        assert "prior_logit" in core_grads and core_grads["prior_logit"].abs() > 0
