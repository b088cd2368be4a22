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


@pytest.fixture(scope="module")
def batch(handmade_prepared):
    g = BatchGatherer(handmade_prepared)
    return g.gather(np.arange(0, handmade_prepared.n_samples, 5))


def test_registry_has_dacdr_variants_and_dnn_multi():
    assert set(DACDR_VARIANTS + ["DNN-multi"]) <= set(model_names())


@pytest.mark.parametrize("name", DACDR_VARIANTS + ["DNN-multi"])
def test_output_shape_and_finite(name, handmade_prepared, batch):
    torch.manual_seed(0)
    model = create_model(name, handmade_prepared.spec).eval()
    out = model.score(batch)
    assert out.shape == (len(batch["label"]),)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", DACDR_VARIANTS + ["DNN-multi"])
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


def test_ablations_remove_the_right_steps(handmade_prepared):
    spec = handmade_prepared.spec
    full = create_model("DACDR", spec)
    no_da = create_model("DACDR w/o DA", spec)
    no_ia = create_model("DACDR w/o IA", spec)
    pool = create_model("DACDR w/o DA&IA", spec)
    assert full.domain_attention is not None and full.item_attention is not None
    assert no_da.domain_attention is None and no_da.item_attention is not None
    assert no_ia.domain_attention is not None and no_ia.item_attention is None
    assert pool.domain_attention is None and pool.item_attention is None


def test_two_step_prior(handmade_prepared, batch):
    """alpha is a distribution over the valid positions, and the item-level weights equal
    alpha * exp(score) renormalised, i.e. step 2 refines inside step 1's allocation."""
    torch.manual_seed(0)
    model = create_model("DACDR", handmade_prepared.spec, heads=1).eval()
    with torch.no_grad():
        parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
    mask = batch["seq_mask"]
    has = mask.any(1)
    alpha = parts["alpha"]
    torch.testing.assert_close(alpha[has].sum(1), torch.ones(int(has.sum())))
    assert (alpha[~mask] == 0).all()
    # recompute step 2 without the prior and apply it by hand
    att = model.item_attention
    s, e_i = parts["seq"], parts["E_i"]
    q, k = att.w_q(e_i), att.w_k(s)
    logits = (q @ k.transpose(1, 2)) / math.sqrt(att.head_dim)
    unnorm = alpha.unsqueeze(1) * torch.exp(logits - logits.max(-1, keepdim=True).values) * mask.unsqueeze(1)
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


def test_dim_must_divide_heads(handmade_prepared):
    with pytest.raises(ValueError, match="divisible"):
        create_model("DACDR", handmade_prepared.spec, dim=30, heads=4)


def test_unknown_model_name(handmade_prepared):
    with pytest.raises(KeyError, match="unknown model"):
        create_model("NoSuchModel", handmade_prepared.spec)


@pytest.mark.parametrize("name", DACDR_VARIANTS)
@pytest.mark.parametrize("match", [True, False])
def test_one_history_against_many_items_equals_repeated_rows(name, match, handmade_prepared, batch):
    """Serving scores one user's history against N candidates with batch-1 user inputs; the scores must be
    those of the history repeated on every row."""
    torch.manual_seed(0)
    model = create_model(name, handmade_prepared.spec, match_features=match).eval()
    assert model.broadcasts_history
    row = int(batch["seq_mask"].sum(1).argmax())  # a user with a long history
    n = 9
    one = model(batch["seq"][row : row + 1], batch["seq_mask"][row : row + 1], batch["item"][:n],
                batch["domain"][row : row + 1])
    repeated = model(batch["seq"][row : row + 1].expand(n, -1, -1), batch["seq_mask"][row : row + 1].expand(n, -1),
                     batch["item"][:n], batch["domain"][row : row + 1].expand(n, -1))
    assert one.shape == (n,)
    torch.testing.assert_close(one, repeated, atol=1e-6, rtol=1e-5)
