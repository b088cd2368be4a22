"""DACDR's domain prior (`domain_prior`): a learnt bias per (domain feature value, behaviour category) on step 1's
logits. The same maths on every path (training's one-function scoring, autograd's graph, the steps one by one,
serving's batch-1 user), zero = the model without it, and a large entry moves step 1's weight where it says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dacdr.data.batches import BatchGatherer
from dacdr.models import create_model
from dacdr.models.dacdr import DACDR
from tests.models.test_attention_parity import _peaky, scoring_paths_agree


@pytest.fixture
def batch(handmade_prepared):
    b = BatchGatherer(handmade_prepared).gather(np.arange(0, handmade_prepared.n_samples, 3))
    b["seq_mask"][:3] = False  # cold users with no history at all
    b["seq"][:3] = 0
    return b


def _prior_model(spec, **params):
    torch.manual_seed(0)
    model = create_model("DACDR", spec, domain_prior=True, **params)
    for part in (model.embeddings, model.domain_attention, model.item_attention):
        _peaky(part, seed=4)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for table in model.domain_prior:
            table.copy_(torch.randn(table.shape, generator=gen))
    return model


@pytest.mark.parametrize("params", [{}, {"domain_mass_feature": True, "mass_feature": True},
                                    {"heads": 4, "domain_prior_gain": 1.0}])
def test_the_prior_is_the_same_on_every_path(params, handmade_prepared, batch, monkeypatch):
    model = _prior_model(handmade_prepared.spec, **params)
    core_grads = scoring_paths_agree(model, batch, monkeypatch)
    prior_grads = [g for n, g in core_grads.items() if n.startswith("domain_prior.")]
    assert len(prior_grads) == len(handmade_prepared.spec.domain_fields)  # one table per domain field
    assert all(g.abs().sum() > 0 for g in prior_grads)


def _prior_by_definition(model, seq, item, domain):
    """The prior as written: per behaviour, the sum over the tables of table[its sample's domain value, its
    category] (an explicit loop), times the gain."""
    seq_ids, _ = model.embeddings.item_ids(seq, item)
    dom_ids = model.embeddings.domain_ids(domain)
    b = max(seq_ids.shape[0], dom_ids.shape[0])
    out = torch.zeros(b, seq_ids.shape[1], dtype=model.domain_prior[0].dtype)
    for (j, g), table in zip(model.prior_pairs, model.domain_prior, strict=True):
        for r in range(b):
            d = dom_ids[min(r, dom_ids.shape[0] - 1), j]
            cats = seq_ids[min(r, seq_ids.shape[0] - 1), :, g]
            out[r] = out[r] + table[d, cats]
    return model.domain_prior_gain * out


def test_the_prior_is_its_definition_with_its_gradient_and_batch_one_sides(handmade_prepared, batch):
    model = _prior_model(handmade_prepared.spec, domain_prior_gain=3.0)
    seq, item, domain = (torch.as_tensor(batch[k]) for k in ("seq", "item", "domain"))
    got = model.step1_prior(seq, item, domain)
    want = _prior_by_definition(model, seq, item, domain)
    torch.testing.assert_close(got, want)
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(3))
    g_got = torch.autograd.grad((got * weights).sum(), list(model.domain_prior))
    g_want = torch.autograd.grad((want * weights).sum(), list(model.domain_prior))
    for a, b in zip(g_got, g_want, strict=True):  # sums in another order: float32's noise on entries of ~10
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    # serving's shapes: one user's history against a batch of domains, and a batch of histories in one domain
    for s_, d_ in ((seq[5:6], domain), (seq, domain[5:6])):
        torch.testing.assert_close(model.step1_prior(s_, item, d_), _prior_by_definition(model, s_, item, d_))


def test_a_zero_prior_is_the_model_without_it(handmade_prepared, batch):
    spec = handmade_prepared.spec
    with_prior = _prior_model(spec)
    with torch.no_grad():
        for table in with_prior.domain_prior:
            table.zero_()
    torch.manual_seed(0)
    plain = create_model("DACDR", spec, domain_prior=False)
    state = {k: v for k, v in with_prior.state_dict().items() if not k.startswith("domain_prior.")}
    plain.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(with_prior.score(batch), plain.score(batch))


def test_a_large_entry_moves_step_one_to_its_category(handmade_prepared, batch):
    spec = handmade_prepared.spec
    model = _prior_model(spec)
    cat_field = spec.item_fields.index("category")
    seq, mask = batch["seq"], batch["seq_mask"]
    row = int(mask.sum(1).argmax())
    cats = seq[row, mask[row], cat_field]
    target = int(cats[0])
    share = float((cats == target).float().mean())
    assert share < 1.0, "the fixture's richest history should have several categories"
    dom = int(batch["domain"][row, 0])
    with torch.no_grad():
        for table in model.domain_prior:
            table.zero_()
        model.domain_prior[0][dom, target] = 10.0  # the domain id's table
        parts = model.attend(seq[row : row + 1], mask[row : row + 1], batch["item"][row : row + 1],
                             batch["domain"][row : row + 1])
    alpha = parts["alpha"][0]
    mass = float(alpha[mask[row] & (seq[row, :, cat_field] == target)].sum())
    assert mass > 0.95 > share


def test_no_category_no_prior_and_the_ablations_without_step_one_have_none(handmade_prepared):
    spec = handmade_prepared.spec
    assert create_model("DACDR", spec, domain_prior=True, domain_prior_fields=("colour",)).domain_prior is None
    for name in ("DACDR w/o DA", "DACDR w/o DA&IA"):
        assert create_model(name, spec, domain_prior=True).domain_prior is None
    assert create_model("DACDR w/o IA", spec, domain_prior=True).domain_prior is not None


def test_a_description_without_the_prior_loads_without_it():
    assert DACDR.legacy_params({"match_on": "tokens", "match_counts": True, "prior_floor": True})["domain_prior"] is False


def test_the_prior_starts_from_the_domains_category_frequencies(handmade_prepared):
    """`domain_prior_init="data"`: the domain id's table starts at each domain's centred log frequency of the
    categories among its target training samples' items; other tables, and `"zero"`, start at 0."""
    prepared = handmade_prepared
    spec = prepared.spec
    model = create_model("DACDR", spec, domain_prior=True, domain_prior_gain=2.0)
    assert all(float(t.abs().sum()) == 0 for t in model.domain_prior)
    said = model.init_from_data(prepared)
    assert said and "category" in said
    idx = prepared.split.train_target
    cat = prepared.item_table[prepared.samples["item"][idx], spec.item_fields.index("category")]
    dom = prepared.samples["domain"][idx]
    counts = np.zeros((spec.vocab_sizes["domain"], spec.vocab_sizes["category"]))
    for d, c in zip(dom, cat, strict=True):
        counts[d, c] += 1
    want = np.log(counts + 1.0) - np.log(counts + 1.0).mean(1, keepdims=True)
    want[counts.sum(1) == 0] = 0.0
    j = spec.domain_fields.index("domain")
    table = model.domain_prior[[p for p, _ in model.prior_pairs].index(j)]
    np.testing.assert_allclose(2.0 * table.detach().numpy(), want, atol=1e-6)
    assert np.abs(want).sum() > 0  # the fixture's domains do prefer some categories
    others = [t for (jj, _), t in zip(model.prior_pairs, model.domain_prior, strict=True) if jj != j]
    assert all(float(t.abs().sum()) == 0 for t in others)
    zero = create_model("DACDR", spec, domain_prior=True, domain_prior_init="zero")
    assert zero.init_from_data(prepared) is None and all(float(t.abs().sum()) == 0 for t in zero.domain_prior)


def test_data_that_cannot_count_leaves_the_prior_at_zero(handmade_prepared):
    class OnDisk:  # streaming data: the training samples are not in memory
        def domain_item_counts(self, field):
            return None

    model = create_model("DACDR", handmade_prepared.spec, domain_prior=True)
    said = model.init_from_data(OnDisk())
    assert "starts at 0" in said and all(float(t.abs().sum()) == 0 for t in model.domain_prior)
    with pytest.raises(ValueError, match="domain_prior_init"):
        create_model("DACDR", handmade_prepared.spec, domain_prior=True, domain_prior_init="random")


def test_a_run_logs_the_data_start(handmade_path, tmp_path):
    from dacdr.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from dacdr.recipes.train import train_run

    cfg = RunConfig(data=DataConfig(path=str(handmade_path), max_len=8),
                    model=ModelConfig(name="DACDR", params={"dim": 8, "domain_prior": True}),
                    train=TrainConfig(epochs=1, batch_size=128, progress=False, num_threads=1))
    train_run(cfg, run_dir=tmp_path / "run")
    assert "domain prior: started from the domains' category frequencies" in (tmp_path / "run" / "log.txt").read_text()
