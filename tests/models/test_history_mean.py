"""DACDR's history mean (`history_mean`, default since dacdr 0.6): the whole history's masked mean as one more
encoder input, for every variant alike; absent from descriptions written before 0.6 and from `DACDR (paper)`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dacdr.data.batches import BatchGatherer
from dacdr.models import create_model
from dacdr.models.dacdr import DACDR
from tests.models.test_attention_parity import _close


@pytest.fixture
def batch(handmade_prepared):
    b = BatchGatherer(handmade_prepared).gather(np.arange(0, handmade_prepared.n_samples, 3))
    b["seq_mask"][:3] = False  # cold users with no history at all
    b["seq"][:3] = 0
    return {k: torch.as_tensor(v) for k, v in b.items()}


@pytest.mark.parametrize("name", ["DACDR", "DACDR w/o DA", "DACDR w/o IA", "DACDR w/o DA&IA"])
def test_every_variant_reads_the_masked_mean_of_its_history(name, handmade_prepared, batch):
    torch.manual_seed(0)
    model = create_model(name, handmade_prepared.spec)
    assert model.history_mean
    parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
    s, keep = parts["seq"], batch["seq_mask"].to(parts["seq"].dtype)
    want = (s * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1.0)
    torch.testing.assert_close(parts["pooled"], want)
    assert torch.all(parts["pooled"][:3] == 0)  # no history: a zero mean, not NaN


def test_the_mean_changes_the_score_and_its_absence_is_the_model_without_it(handmade_prepared, batch):
    spec = handmade_prepared.spec
    torch.manual_seed(0)
    with_mean = create_model("DACDR", spec)
    first = with_mean.encoder[0]
    k = with_mean.params["dim"]
    with torch.no_grad():  # the encoder's columns that read the mean: the last k of its input
        first.weight[:, -k:] = 0
    torch.manual_seed(0)
    plain = create_model("DACDR", spec, history_mean=False)
    state = with_mean.state_dict()
    state["encoder.0.weight"] = state["encoder.0.weight"][:, :-k]
    plain.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(with_mean.score(batch), plain.score(batch))
        first.weight[:, -k:] = 1.0
        assert not torch.allclose(with_mean.score(batch), plain.score(batch))


def test_the_mean_inside_the_one_function_scoring_is_the_mean_as_a_pass_of_its_own(handmade_prepared, batch,
                                                                                  monkeypatch):
    """Training takes the mean as one more row of the scoring's weighted means (`fused_mean`): the same mean and
    the same gradients as the separate masked mean."""
    torch.manual_seed(0)
    model = create_model("DACDR", handmade_prepared.spec)
    def run():
        model.zero_grad()
        parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
        proj = {k: torch.randn(parts[k].shape, generator=torch.Generator().manual_seed(i))
                for i, k in enumerate(sorted(parts))}
        sum((parts[k] * proj[k]).sum() for k in parts).backward()
        return parts["pooled"].detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fused, g_fused = run()
    monkeypatch.setattr(DACDR, "fused_mean", False)
    separate, g_sep = run()
    torch.testing.assert_close(fused, separate)
    assert g_fused.keys() == g_sep.keys()
    for name in g_sep:  # sums in another order: float32's noise relative to each gradient's scale
        _close(g_fused[name], g_sep[name], what=name)


def test_descriptions_before_0_6_and_the_paper_model_have_none(handmade_prepared):
    old = {"match_on": "tokens", "match_counts": True, "prior_floor": True, "domain_prior": True}
    assert DACDR.legacy_params(old)["history_mean"] is False
    assert create_model("DACDR (paper)", handmade_prepared.spec).history_mean is False
