"""Step 1's scores for the batch's distinct domains at once (`DACDR.domain_rows`, `layers.two_step_attention` with
``q_dom``): step 1's query rows depend on the domain only, so the batch's scores against them can be one product
of the whole sequence with every domain's rows. The same outputs and gradients as the per-sample rows, the
textbook maths and the steps one by one: in float64 to 1e-10 (the algebra), in float32 to float noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dacdr.models.dacdr as dacdr_module
from dacdr.data.batches import BatchGatherer
from dacdr.models import create_model
from dacdr.models.dacdr import DACDR
from dacdr.models.layers import two_step_attention
from tests.models.test_attention_parity import _close, _model_outputs, _peaky, _two_step_textbook


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("big_backward", [False, True])
@pytest.mark.parametrize("domains", ["several", "one", "unused"])
@pytest.mark.parametrize("floor", [True, False])
@pytest.mark.parametrize("mass", [(False, False), (True, True)])
def test_domain_rows_match_the_per_sample_rows(dtype, big_backward, domains, floor, mass):
    """The function with step 1's rows per domain against the same rows gathered per sample (the default path)
    and against the textbook maths: outputs, log-masses, and the gradients of the domain rows, step 2's rows, the
    sequence and the floor's share; full, padded, empty and one-behaviour histories; several domains in the
    batch, one, and a domain no sample has (its rows' gradient is zero)."""
    b, length, k, md, mn = 7, 9, 8, 6, 4
    gen = torch.Generator().manual_seed(3 + 2 * floor + big_backward)
    n = 1 if domains == "one" else 3
    q_dom = (torch.randn(n, md, k, generator=gen) * 4.0).to(dtype)  # sharp, as temperature 0.25 makes them
    q_i = (torch.randn(b, mn, k, generator=gen) * 4.0).to(dtype)
    s = torch.randn(b, length, k, generator=gen).to(dtype)
    mask = torch.rand(b, length, generator=gen) < 0.6
    mask[0], mask[1], mask[2, :-1] = True, False, False  # full, empty, one behaviour
    index = torch.randperm(b, generator=gen) % n
    if domains == "unused":
        index = torch.where(index == 1, 2, index)
    logit = torch.tensor(-1.0, dtype=dtype)

    def per_domain(qd, qi, ss, mix):
        return two_step_attention(qi, ss, mask, mix, md, *mass, q_dom=qd, dom_index=index, big_backward=big_backward)

    def per_sample(qd, qi, ss, mix):
        return two_step_attention(torch.cat([qd[index], qi], dim=1), ss, mask, mix, md, *mass)

    def textbook(qd, qi, ss, mix):
        return _two_step_textbook(torch.cat([qd[index], qi], dim=1), ss, mask, mix, md, *mass)

    results = []
    for fn in (per_domain, per_sample, textbook):
        leaves = [t.detach().requires_grad_() for t in (q_dom, q_i, s, logit)]
        outs = fn(*leaves[:3], torch.sigmoid(leaves[3]) if floor else None)
        kept = [o for o in outs if o is not None]
        gen = torch.Generator().manual_seed(5)
        sum((o * torch.randn(o.shape, generator=gen, dtype=dtype)).sum() for o in kept).backward()
        results.append(([o.detach() for o in kept], [t.grad for t in leaves]))
    got, got_g = results[0]
    assert len(got) == 3 + sum(mass)
    for want, want_g in results[1:]:
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
    assert torch.all(w.masked_select(~mask[:, None, :].expand_as(w)) == 0)  # padding: zero weight
    if domains == "unused":
        assert torch.all(got_g[0][1] == 0)


def test_domain_rows_refuse_half_the_inputs():
    q, s, mask = torch.randn(2, 4, 8), torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="q_dom and dom_index"):
        two_step_attention(q, s, mask, None, 2, q_dom=torch.randn(1, 2, 8))


@pytest.fixture(scope="module")
def batch(handmade_prepared):
    b = BatchGatherer(handmade_prepared).gather(np.arange(handmade_prepared.n_samples))
    b["seq_mask"][:3] = False  # cold users with no history at all
    b["seq"][:3] = 0
    return b


def _one_domain(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The samples of the batch's most common domain (a batch with one domain)."""
    rows, index, counts = torch.unique(batch["domain"], dim=0, return_inverse=True, return_counts=True)
    keep = index == counts.argmax()
    return {key: value[keep] for key, value in batch.items()}


def _model(handmade_prepared, params, dtype):
    torch.manual_seed(0)
    model = create_model("DACDR", handmade_prepared.spec, **params)
    for part in (model.embeddings, model.domain_attention, model.item_attention):
        _peaky(part, seed=6)
    if model.prior_logit is not None:
        with torch.no_grad():
            model.prior_logit.fill_(-0.5)
    return model.to(dtype)


@pytest.mark.parametrize("mode", ["scores", "all"])
@pytest.mark.parametrize("params", [{}, {"heads": 1}, {"heads": 4}, {"mass_feature": True, "domain_mass_feature": True},
                                    {"temperature": 1.0, "prior_floor": False}, {"match_on": "values"}])
@pytest.mark.parametrize("one_domain", [False, True])
def test_dacdr_domain_rows_equal_the_per_sample_rows(mode, params, one_domain, handmade_prepared, batch, monkeypatch):
    """DACDR with step 1's scores per domain against the per-sample rows of the same one-function scoring (in
    float64 to 1e-10) and against the steps one by one (float32, float noise): the scores, the served scores, every
    attention output and every parameter's gradient; the batch has empty and padded histories and several
    domains, or one."""
    data = _one_domain(batch) if one_domain else batch
    n_domains = len(torch.unique(data["domain"], dim=0))
    assert n_domains == 1 if one_domain else n_domains >= 2
    calls = []
    real = dacdr_module.two_step_attention
    monkeypatch.setattr(dacdr_module, "two_step_attention",
                        lambda *a, **kw: calls.append(kw.get("q_dom") is not None) or real(*a, **kw))
    for dtype in (torch.float64, torch.float32):
        model = _model(handmade_prepared, params, dtype)
        monkeypatch.setattr(DACDR, "domain_rows", mode)
        new_out, new_grads = _model_outputs(model, data)
        monkeypatch.setattr(DACDR, "domain_rows", "off")
        old_out, old_grads = _model_outputs(model, data)
        others = [(old_out, old_grads)]
        if dtype == torch.float32:  # the steps one by one keep a float32 uniform allocation: compared in float32
            monkeypatch.setattr(DACDR, "fuse_steps", False)
            others.append(_model_outputs(model, data))
            monkeypatch.setattr(DACDR, "fuse_steps", True)
        for other_out, other_grads in others:
            assert new_out.keys() == other_out.keys() and new_grads.keys() == other_grads.keys()
            for key in other_out:
                assert torch.isfinite(new_out[key]).all(), key
                _close(new_out[key], other_out[key], dtype, what=key)
            for key in other_grads:
                _close(new_grads[key], other_grads[key], dtype, what=f"grad {key}")
        assert {"embeddings.tables.domain.weight", "domain_attention.w_q.weight"} <= new_grads.keys()
    assert calls == [True, False, True, False], "the per-domain path was not taken (or taken outside training)"


def test_domain_rows_leave_evaluation_alone(handmade_prepared, batch, monkeypatch):
    """Evaluation, serving and exports do not take the one-function scoring at all: with the per-domain rows on,
    the no-grad scores are the step-by-step path's, bit for bit."""
    model = _model(handmade_prepared, {}, torch.float32).eval()
    monkeypatch.setattr(DACDR, "domain_rows", "all")
    with torch.no_grad():
        got = model.score(batch)
    monkeypatch.setattr(DACDR, "domain_rows", "off")
    with torch.no_grad():
        want = model.score(batch)
    assert torch.equal(got, want)


@pytest.mark.parametrize("lever", ["domain-rows", "domain-rows-all", "chunk4"])
def test_throughput_levers_keep_the_maths(lever, handmade_prepared, batch):
    """benchmarks/train_throughput.py's levers of this kind change the cost only: under each, the training path's
    outputs and every parameter's gradient are the default's (float noise), and the lever is really applied."""
    from tests.benchmark_scripts import BENCH, load

    bench = load(BENCH / "train_throughput.py")
    name, levers = bench.parse_spec(f"DACDR+{lever}")
    assert name == "DACDR" and levers == {lever}
    model = _model(handmade_prepared, {}, torch.float32)
    want_out, want_grads = _model_outputs(model, batch)
    seen = []
    real = dacdr_module.two_step_attention

    def spy(*a, **kw):
        seen.append((a[1].shape[0], kw.get("q_dom") is not None))
        return real(*a, **kw)

    dacdr_module.two_step_attention = spy
    try:
        with bench.lever_context(levers, torch.device("cpu")):
            got_out, got_grads = _model_outputs(model, batch)
    finally:
        dacdr_module.two_step_attention = real
    if lever == "chunk4":  # the scoring called on slices of at most 4 samples, per-sample rows
        assert len(seen) == -(-len(batch["label"]) // 4) and all(n <= 4 and not dom for n, dom in seen)
    else:
        assert seen == [(len(batch["label"]), True)]
    assert DACDR.domain_rows == "off"  # the switch is back where it was
    for key in want_out:
        _close(got_out[key], want_out[key], what=key)
    for key in want_grads:
        _close(got_grads[key], want_grads[key], what=f"grad {key}")


def test_throughput_levers_are_checked():
    from tests.benchmark_scripts import BENCH, load

    bench = load(BENCH / "train_throughput.py")
    with pytest.raises(SystemExit, match="unknown lever"):
        bench.parse_spec("DACDR+chunk0")
    with pytest.raises(SystemExit, match="unknown lever"):
        bench.parse_spec("DACDR+domainrows")
    with pytest.raises(SystemExit, match="not with domain-rows"):
        bench.parse_spec("DACDR+chunk64+domain-rows")
