"""DACDR and its ablations: shapes, masks, empty histories, the two-step prior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dacdr.data.batches import BatchGatherer
from dacdr.models import create_model, model_names
from dacdr.models.layers import CrossAttention

DACDR_VARIANTS = ["DACDR", "DACDR w/o DA", "DACDR w/o IA", "DACDR w/o DA&IA"]
ALL_VARIANTS = [*DACDR_VARIANTS, "DACDR (paper)"]


@pytest.fixture(scope="module")
def batch(handmade_prepared):
    g = BatchGatherer(handmade_prepared)
    return g.gather(np.arange(0, handmade_prepared.n_samples, 5))


def test_registry_has_dacdr_variants_and_dnn_multi():
    assert set(DACDR_VARIANTS + ["DNN-multi"]) <= set(model_names())


@pytest.mark.parametrize("name", ALL_VARIANTS + ["DNN-multi"])
def test_output_shape_and_finite(name, handmade_prepared, batch):
    torch.manual_seed(0)
    model = create_model(name, handmade_prepared.spec).eval()
    out = model.score(batch)
    assert out.shape == (len(batch["label"]),)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_VARIANTS + ["DNN-multi"])
def test_empty_history_gives_finite_output_and_gradients(name, handmade_prepared, batch):
    torch.manual_seed(0)
    model = create_model(name, handmade_prepared.spec)
    b = dict(batch)
    b["seq_mask"] = torch.zeros_like(b["seq_mask"])
    b["seq"] = torch.zeros_like(b["seq"])
    out = model.score(b)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name", DACDR_VARIANTS + ["DNN-multi"])
def test_masked_positions_do_not_matter(name, handmade_prepared, batch):
    torch.manual_seed(0)
    model = create_model(name, handmade_prepared.spec).eval()
    noisy = dict(batch)
    junk = torch.randint(2, 5, batch["seq"].shape)
    noisy["seq"] = torch.where(batch["seq_mask"].unsqueeze(-1), batch["seq"], junk)
    torch.testing.assert_close(model.score(batch), model.score(noisy))


def test_ablations_differ_only_in_the_attention_weights(handmade_prepared):
    """With the default ablation ("uniform") every variant has the same parameters except the query / key
    projections of the steps it removes, and a removed step's weights are the fixed allocation."""
    spec = handmade_prepared.spec
    models = {v: create_model(n, spec, domain_prior=True)
              for v, n in zip(("full", "no_da", "no_ia", "pool"), DACDR_VARIANTS, strict=True)}
    # the scoring parameters: the steps' query / key maps, the floor of step 2's prior (only with both steps) and
    # step 1's domain prior (only with step 1)
    shapes = {v: {k: tuple(p.shape) for k, p in m.named_parameters()
                  if ".w_q." not in k and ".w_k." not in k and k != "prior_logit" and not k.startswith("domain_prior.")}
              for v, m in models.items()}
    priors = {v: any(k.startswith("domain_prior.") for k, _ in m.named_parameters()) for v, m in models.items()}
    assert priors == {"full": True, "no_da": False, "no_ia": True, "pool": False}
    assert shapes["full"] == shapes["no_da"] == shapes["no_ia"] == shapes["pool"]
    scoring = {v: {k for k, _ in m.named_parameters() if ".w_q." in k or ".w_k." in k} for v, m in models.items()}
    assert {k.split(".")[0] for k in scoring["full"]} == {"domain_attention", "item_attention"}
    assert {k.split(".")[0] for k in scoring["no_da"]} == {"item_attention"}
    assert {k.split(".")[0] for k in scoring["no_ia"]} == {"domain_attention"}
    assert scoring["pool"] == set()


def test_removed_steps_use_the_fixed_allocations(handmade_prepared, batch):
    spec = handmade_prepared.spec
    mask = batch["seq_mask"]
    has = mask.any(1)
    uniform = mask.float() / mask.float().sum(1, keepdim=True).clamp_min(1)
    with torch.no_grad():
        pool = create_model("DACDR w/o DA&IA", spec).attend(batch["seq"], mask, batch["item"], batch["domain"])
        no_ia = create_model("DACDR w/o IA", spec).attend(batch["seq"], mask, batch["item"], batch["domain"])
    torch.testing.assert_close(pool["alpha"], uniform)
    torch.testing.assert_close(pool["A_i"].mean(dim=(1, 2)), uniform)
    # pooling's match compares the plain mean of the history's tokens with the candidate
    expected = (uniform.unsqueeze(-1) * pool["seq"]).sum(1)
    torch.testing.assert_close(pool["offered"][:, 0], expected)
    # w/o IA: step 2's weights are step 1's allocation, which is not uniform
    torch.testing.assert_close(no_ia["A_i"][:, 0, 0], no_ia["alpha"])
    assert not torch.allclose(no_ia["alpha"][has], uniform[has])


def test_paper_reading_of_the_ablations(handmade_prepared):
    """ablation="drop" removes a step's output from the encoder (MODEL.md's literal ablation table)."""
    spec = handmade_prepared.spec
    no_da = create_model("DACDR w/o DA", spec, ablation="drop")
    no_ia = create_model("DACDR w/o IA", spec, ablation="drop")
    pool = create_model("DACDR w/o DA&IA", spec, ablation="drop")
    assert no_da.domain_attention is None and no_da.item_attention is not None
    assert no_ia.domain_attention is not None and no_ia.item_attention is None
    assert pool.domain_attention is None and pool.item_attention is None
    paper = create_model("DACDR (paper)", spec)
    assert not paper.match_features and paper.ablation == "drop"


def test_value_init_identity_makes_the_output_the_weighted_tokens(handmade_prepared, batch):
    model = create_model("DACDR", handmade_prepared.spec, value_init="identity", heads=1)
    with torch.no_grad():
        parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
    expected = parts["A_i"][:, 0] @ parts["seq"]  # identity W_V, W_O (one head): the weighted tokens themselves
    torch.testing.assert_close(parts["H_i"], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(parts["offered"], expected, atol=1e-5, rtol=1e-4)


def test_position_keys_make_recency_matter(handmade_prepared, batch):
    """Without position codes both steps are permutation-invariant; with them the order changes the weights."""
    torch.manual_seed(0)
    row = int(batch["seq_mask"].sum(1).argmax())
    one = {k: v[row : row + 1] for k, v in batch.items()}
    n = int(one["seq_mask"].sum())
    perm = torch.arange(one["seq"].shape[1])
    perm[-n:] = perm[-n:].flip(0)  # reverse the valid (right-aligned) part
    shuffled = dict(one, seq=one["seq"][:, perm])
    plain = create_model("DACDR", handmade_prepared.spec).eval()
    torch.testing.assert_close(plain.score(one), plain.score(shuffled))
    model = create_model("DACDR", handmade_prepared.spec, position_keys=True).eval()
    with torch.no_grad():
        model.positions.weight.normal_(0, 1.0)
    assert not torch.allclose(model.score(one), model.score(shuffled))


def test_temperature_sharpens_the_weights(handmade_prepared, batch):
    torch.manual_seed(0)
    warm = create_model("DACDR", handmade_prepared.spec, temperature=1.0)
    torch.manual_seed(0)
    sharp = create_model("DACDR", handmade_prepared.spec, temperature=0.25)
    with torch.no_grad():
        w1 = warm.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])["A_i"]
        w2 = sharp.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])["A_i"]
    # concentration (sum of squared weights; 1/n when uniform) grows as the softmax sharpens
    assert (w2**2).sum(-1).mean() > (w1**2).sum(-1).mean()
    with pytest.raises(ValueError, match="temperature"):
        create_model("DACDR", handmade_prepared.spec, temperature=0.0)


@pytest.mark.parametrize("version", ["0.1", "0.2", "0.3"])
def test_old_descriptions_rebuild_the_old_model(version, handmade_prepared, tmp_path):
    """A checkpoint written before a default moved loads as the model it was trained as: 0.1 had no `match_on`
    (values match, dropped steps), 0.2 no `match_counts` (no count features), 0.3 no `prior_floor` (step 2's
    prior is alpha; temperature 1, which 0.2 and 0.3 wrote down and 0.1 did not)."""
    import json

    from dacdr.training.checkpoint import load_model, save_model

    torch.manual_seed(0)
    params = {"match_on": "values", "ablation": "drop"} if version == "0.1" else {}
    old = create_model("DACDR", handmade_prepared.spec, match_counts=version == "0.3", temperature=1.0,
                       prior_floor=False, **params)
    save_model(old, "DACDR", tmp_path)
    desc = json.loads((tmp_path / "model.json").read_text())
    newer = ["prior_floor", "attention_score", "cosine_scale"]
    newer += ["match_counts", "domain_mass_feature", "count_weights"] if version in ("0.1", "0.2") else []
    newer += ["match_on", "ablation", "value_init", "position_keys", "temperature", "mass_feature"] if version == "0.1" else []
    for key in newer:
        desc["params"].pop(key)
    (tmp_path / "model.json").write_text(json.dumps(desc))
    loaded, _ = load_model(tmp_path)
    assert loaded.match_counts == (version == "0.3")
    assert (loaded.match_on, loaded.ablation) == (("values", "drop") if version == "0.1" else ("tokens", "uniform"))
    assert loaded.prior_logit is None
    assert loaded.domain_attention.scale == pytest.approx(1 / math.sqrt(loaded.domain_attention.head_dim))


@pytest.mark.parametrize("floor", [False, True])
def test_two_step_prior(floor, handmade_prepared, batch):
    """alpha is a distribution over the valid positions, and the item-level weights equal prior * exp(score)
    renormalised, with prior = alpha (the paper) or, with the floor (0.4's default), (1 - m) alpha + m / n: step 2
    refines inside step 1's allocation."""
    torch.manual_seed(0)
    model = create_model("DACDR", handmade_prepared.spec, heads=1, prior_floor=floor).eval()
    with torch.no_grad():
        parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
    mask = batch["seq_mask"]
    has = mask.any(1)
    alpha = parts["alpha"]
    torch.testing.assert_close(alpha[has].sum(1), torch.ones(int(has.sum())))
    assert (alpha[~mask] == 0).all()
    prior = alpha
    if floor:
        m = torch.sigmoid(model.prior_logit.detach())
        prior = (1 - m) * alpha + m * mask.float() / mask.float().sum(1, keepdim=True).clamp_min(1)
    # recompute step 2 without the prior and apply it by hand
    att = model.item_attention
    s, e_i = parts["seq"], parts["E_i"]
    q, k = att.w_q(e_i), att.w_k(s)
    logits = (q @ k.transpose(1, 2)) * att.scale
    unnorm = prior.unsqueeze(1) * torch.exp(logits - logits.max(-1, keepdim=True).values) * mask.unsqueeze(1)
    expected = unnorm / unnorm.sum(-1, keepdim=True).clamp_min(1e-30)
    torch.testing.assert_close(parts["A_i"][:, 0][has], expected[has], atol=1e-5, rtol=1e-4)


def test_cross_attention_all_masked_rows_are_zero():
    att = CrossAttention(8, heads=2)
    q, kv = torch.randn(3, 2, 8), torch.randn(3, 5, 8)
    mask = torch.tensor([[True] * 5, [False] * 5, [True, False, False, False, False]])
    out, w = att(q, kv, mask)
    assert torch.all(out[1] == 0) and torch.all(w[1] == 0)
    torch.testing.assert_close(w[0].sum(-1), torch.ones(2, 2))
    assert torch.all(w[2, ..., 1:] == 0)


def test_log_mass_is_zero_for_equal_scores_and_grows_with_a_match():
    att = CrossAttention(4, heads=1)
    with torch.no_grad():
        att.w_q.weight.copy_(torch.eye(4))
        att.w_k.weight.copy_(torch.eye(4))
    keys = torch.zeros(3, 6, 4)
    keys[1, 0] = torch.tensor([9.0, 0, 0, 0])  # one behaviour matches the query strongly
    keys[2, :3] = torch.tensor([9.0, 0, 0, 0])  # three do
    query = torch.tensor([[[1.0, 0, 0, 0]]]).expand(3, 1, 4)
    mask = torch.ones(3, 6, dtype=torch.bool)
    _, log_mass = att.weights_and_mass(query, keys, mask)
    assert log_mass[0].abs().max() < 1e-6
    assert 0 < log_mass[1, 0, 0] < log_mass[2, 0, 0]  # the count of matching behaviours survives
    _, empty = att.weights_and_mass(query, keys, torch.zeros(3, 6, dtype=torch.bool))
    assert torch.all(empty == 0)


def test_dim_must_divide_heads(handmade_prepared):
    with pytest.raises(ValueError, match="divisible"):
        create_model("DACDR", handmade_prepared.spec, dim=30, heads=4)


def test_unknown_model_name(handmade_prepared):
    with pytest.raises(KeyError, match="unknown model"):
        create_model("NoSuchModel", handmade_prepared.spec)


@pytest.mark.parametrize("name", DACDR_VARIANTS)
@pytest.mark.parametrize("params", [{}, {"match_features": False}, {"match_on": "values", "ablation": "drop"},
                                    {"position_keys": True, "value_init": "identity"}, {"mass_feature": True},
                                    {"match_counts": True, "domain_mass_feature": True}])
def test_one_history_against_many_items_equals_repeated_rows(name, params, handmade_prepared, batch):
    """Serving scores one user's history against N candidates with batch-1 user inputs; the scores must be
    those of the history repeated on every row."""
    torch.manual_seed(0)
    model = create_model(name, handmade_prepared.spec, **params).eval()
    assert model.broadcasts_history
    row = int(batch["seq_mask"].sum(1).argmax())  # a user with a long history
    n = 9
    one = model(batch["seq"][row : row + 1], batch["seq_mask"][row : row + 1], batch["item"][:n],
                batch["domain"][row : row + 1])
    repeated = model(batch["seq"][row : row + 1].expand(n, -1, -1), batch["seq_mask"][row : row + 1].expand(n, -1),
                     batch["item"][:n], batch["domain"][row : row + 1].expand(n, -1))
    assert one.shape == (n,)
    torch.testing.assert_close(one, repeated, atol=1e-6, rtol=1e-5)


def test_cross_attention_equals_the_textbook_computation():
    """The implementation projects the queries into key space and the averaged history once; it must give
    the weights and outputs of softmax(Q W_Q (K W_K)^T / sqrt(d) + log prior) V W_V W_O, heads concatenated."""
    torch.manual_seed(0)
    att = CrossAttention(8, heads=2, temperature=0.7)
    q, kv = torch.randn(4, 3, 8), torch.randn(4, 6, 8)
    mask = torch.rand(4, 6) < 0.7
    mask[:, -1] = True
    prior = torch.softmax(torch.randn(4, 6), -1)
    out, w = att(q, kv, mask, prior.log())
    qh = att.w_q(q).view(4, 3, 2, 4).transpose(1, 2)
    kh = att.w_k(kv).view(4, 6, 2, 4).transpose(1, 2)
    vh = att.w_v(kv).view(4, 6, 2, 4).transpose(1, 2)
    logits = qh @ kh.transpose(-1, -2) / (2.0 * 0.7) + prior.log()[:, None, None, :]
    ref_w = torch.softmax(logits.masked_fill(~mask[:, None, None, :], float("-inf")), -1)
    ref = att.w_o((ref_w @ vh).transpose(1, 2).reshape(4, 3, 8))
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_field_hits_counts_the_behaviours_that_share_the_candidates_values():
    from dacdr.models.dacdr import field_hits

    # one user, 4 behaviours (item, category) + a behaviour-type field; the last position is padding
    seq = torch.tensor([[[5, 2, 3], [6, 2, 3], [5, 4, 3], [0, 0, 0]]])
    mask = torch.tensor([[True, True, True, False]])
    item = torch.tensor([[5, 2], [7, 4], [1, 1]])  # candidates: seen item of category 2; new item; OOV
    uniform = torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]).expand(3, 2, 4)
    hits = field_hits(seq, item, mask, uniform)
    share = torch.tensor([[2 / 3, 2 / 3], [0.0, 1 / 3], [0.0, 0.0]])
    torch.testing.assert_close(hits[:, :2], share)
    torch.testing.assert_close(hits[:, 2:], torch.log1p(share * 3))  # uniform weights: the counts 2, 2 / 0, 1
    skewed = torch.tensor([0.5, 0.0, 0.5, 0.0]).expand(3, 2, 4)  # weights move the share, not the validity
    torch.testing.assert_close(field_hits(seq, item, mask, skewed)[0, :2], torch.tensor([1.0, 0.5]))


def test_match_counts_reach_the_predictor(handmade_prepared, batch):
    torch.manual_seed(0)
    model = create_model("DACDR", handmade_prepared.spec, match_counts=True).eval()
    parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
    n = len(handmade_prepared.spec.item_fields)
    assert parts["hits"].shape == (len(batch["label"]), 2 * n)
    assert (parts["hits"][:, :n] >= 0).all() and (parts["hits"][:, :n] <= 1 + 1e-6).all()
    assert model.predictor[0].in_features == 64 + 2 * n * 32 + 2 * n


def test_domain_mass_is_steps_one_log_normaliser_and_zero_without_it(handmade_prepared, batch):
    torch.manual_seed(0)
    model = create_model("DACDR", handmade_prepared.spec, domain_mass_feature=True).eval()
    parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
    e_d, keys = parts["E_d"], parts["seq"]
    _, expected = model.domain_attention.weights_and_mass(e_d, keys, batch["seq_mask"])
    torch.testing.assert_close(parts["log_mass_d"], expected.mean(1))
    no_da = create_model("DACDR w/o DA", handmade_prepared.spec, domain_mass_feature=True).eval()
    assert (no_da.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])["log_mass_d"] == 0).all()


def test_uniform_count_weights_give_every_variant_the_same_counts(handmade_prepared, batch):
    torch.manual_seed(0)
    args = (batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
    hits = [create_model(name, handmade_prepared.spec, count_weights="uniform").eval().attend(*args)["hits"]
            for name in DACDR_VARIANTS]
    for h in hits[1:]:
        torch.testing.assert_close(h, hits[0])


def test_domain_count_weights_use_step_ones_allocation(handmade_prepared, batch):
    """`count_weights="domain"`: the counts are weighted by alpha, whatever step 2 selects."""
    from dacdr.models.dacdr import field_hits

    torch.manual_seed(0)
    model = create_model("DACDR", handmade_prepared.spec, count_weights="domain").eval()
    with torch.no_grad():
        model.item_attention.w_q.weight.mul_(50.0)  # a sharp step 2 must not move the counts
        parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
    n = parts["E_i"].shape[1]
    w = parts["alpha"][:, None, :].expand(-1, n, -1)
    expected = field_hits(*model.embeddings.item_ids(batch["seq"], batch["item"]), batch["seq_mask"], w)
    torch.testing.assert_close(parts["hits"], expected)
    assert not torch.allclose(parts["A_i"].mean(1), w)
    with pytest.raises(ValueError, match="count_weights"):
        create_model("DACDR", handmade_prepared.spec, count_weights="items")


def test_both_count_weights_give_the_weighted_and_the_plain_counts(handmade_prepared, batch):
    """`count_weights="both"`: step 2's weighted counts, then the plain ones; the predictor reads all 4n."""
    from dacdr.models.dacdr import field_hits

    torch.manual_seed(0)
    model = create_model("DACDR", handmade_prepared.spec, count_weights="both").eval()
    with torch.no_grad():
        parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
        score = model.score(batch)
    n = parts["E_i"].shape[1]
    ids = model.embeddings.item_ids(batch["seq"], batch["item"])
    uniform = batch["seq_mask"].float() / batch["seq_mask"].float().sum(1, keepdim=True).clamp_min(1.0)
    expected = torch.cat([field_hits(*ids, batch["seq_mask"], parts["A_i"].mean(1)),
                          field_hits(*ids, batch["seq_mask"], uniform[:, None, :].expand(-1, n, -1))], dim=1)
    torch.testing.assert_close(parts["hits"], expected)
    assert parts["hits"].shape[1] == 4 * n and torch.isfinite(score).all()


def test_cosine_scores_are_the_scaled_cosine_and_ignore_the_keys_length():
    """`score="cosine"`: logits = g_h cos(q W_Q,h, k W_K,h)... taken in token space: g_h cos(query M_h, key), g_h
    learnt (starts at `cosine_scale`); scaling a key does not change its weight."""
    torch.manual_seed(0)
    att = CrossAttention(8, heads=2, score="cosine", cosine_scale=5.0)
    q, kv = torch.randn(3, 2, 8), torch.randn(3, 6, 8)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    w = att.weights(q, kv, mask)
    wq, wk = att.w_q.weight.view(2, 4, 8), att.w_k.weight.view(2, 4, 8)
    u = torch.einsum("bmk,hdk,hdj->bhmj", q, wq, wk)  # the query's map into token space, per head
    cos = torch.einsum("bhmj,blj->bhml", u / u.norm(dim=-1, keepdim=True), kv / kv.norm(dim=-1, keepdim=True))
    ref = torch.softmax((5.0 * cos).masked_fill(~mask[:, None, None, :], float("-inf")), -1)
    torch.testing.assert_close(w, ref, atol=1e-6, rtol=1e-5)
    scaled = kv * torch.tensor([1.0, 3.0, 0.2, 1.0, 7.0, 1.0])[None, :, None]
    torch.testing.assert_close(att.weights(q, scaled, mask), w, atol=1e-6, rtol=1e-5)
    att.weights(q, kv, mask)[..., 0].sum().backward()
    assert att.log_scale.grad is not None and att.log_scale.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="score"):
        CrossAttention(8, heads=2, score="euclid")


def test_prior_floor_lets_step_two_see_behaviours_step_one_leaves_out(handmade_prepared, batch):
    """With `prior_floor` step 2's prior is (1 - m) alpha + m / n: where step 1 gives (almost) nothing, step 2's
    weight stays at least m / n of what a uniform prior would allow; without it the prior is alpha itself."""
    torch.manual_seed(0)
    model = create_model("DACDR", handmade_prepared.spec, heads=1, prior_floor=True).eval()
    assert model.prior_logit is not None
    assert float(torch.sigmoid(model.prior_logit.detach())) == pytest.approx(0.1192, abs=1e-3)
    with torch.no_grad():
        model.domain_attention.w_q.weight.mul_(1e4)  # a very sharp step 1
        parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
        model.prior_logit.fill_(-30.0)  # the floor off: the prior is alpha
        plain = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
    mask = batch["seq_mask"]
    starved = (plain["alpha"] < 1e-6) & mask  # a very sharp step 1 leaves these out
    assert starved.any()
    a_floor, a_plain = parts["A_i"][:, 0, 0], plain["A_i"][:, 0, 0]
    assert (a_plain[starved] < 1e-4).all()
    assert a_floor[starved].mean() > 100 * a_plain[starved].mean()
    for name in ("DACDR w/o DA", "DACDR w/o IA", "DACDR w/o DA&IA"):  # nothing to mix without both steps
        assert create_model(name, handmade_prepared.spec, prior_floor=True).prior_logit is None
