"""UserItemBias: registered by its file alone, and a cold-start user's source-learnt bias reaches her target
scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dacdr.config import TrainConfig
from dacdr.data.batches import BatchGatherer
from dacdr.models import baselines, create_model, get_entry, paper_order, select_models
from dacdr.training.trainer import Trainer


def build(prepared):
    torch.manual_seed(0)
    return create_model("UserItemBias", prepared.spec, n_users=len(prepared.vocabs["user"]))


def test_its_file_alone_puts_it_in_the_tables_and_its_family():
    entry = get_entry("UserItemBias")
    assert entry.family == "id-bridge" and "user" in entry.cls.inputs
    order = paper_order()
    assert order.index("DNN-single") < order.index("UserItemBias") < order.index("CMF")  # order=25
    assert "UserItemBias" in baselines() and "UserItemBias" in select_models(["id-bridge"])
    with pytest.raises(ValueError, match="n_users"):
        create_model("UserItemBias", None)


def test_score_is_the_sum_of_the_three_biases(handmade_prepared):
    model = build(handmade_prepared).eval()
    batch = BatchGatherer(handmade_prepared).gather(np.arange(handmade_prepared.n_samples))
    u, i, d = batch["user"][0], batch["item"][0, 0], batch["domain"][0, 0]
    with torch.no_grad():
        model.user_bias.weight[u] = 0.5
        model.item_bias.weight[i] = -0.25
        model.domain_bias.weight[d] = 0.125
        model.output.bias.fill_(0.0)
        out = model.score(batch)
    rows = (batch["user"] == u) & (batch["item"][:, 0] == i) & (batch["domain"][:, 0] == d)
    torch.testing.assert_close(out[rows], torch.full((int(rows.sum()),), 0.375))
    alone = ~((batch["user"] == u) | (batch["item"][:, 0] == i) | (batch["domain"][:, 0] == d))
    assert alone.any() and torch.all(out[alone] == 0)


def test_a_cold_start_user_gets_the_bias_of_her_source_rows(tiny_prepared, tmp_path):
    """Trained on source and target rows, the cold-start test users' biases were learnt on their source rows
    only, and their order follows their source click rates."""
    from scipy.stats import spearmanr

    model = build(tiny_prepared)
    cfg = TrainConfig(epochs=2, batch_size=256, max_steps_per_epoch=100, lr=3e-2, patience=2, progress=False,
                      seed=0)
    Trainer(tiny_prepared, model, "UserItemBias", cfg, tmp_path).fit()
    s, split = tiny_prepared.samples, tiny_prepared.split
    cold_users = np.unique(s["user"][split.test[split.test_cold]])
    src = split.train_source
    shown = np.bincount(s["user"][src], minlength=len(tiny_prepared.vocabs["user"]))
    clicks = np.bincount(s["user"][src], weights=s["label"][src], minlength=len(shown))
    often = cold_users[shown[cold_users] >= 20]
    assert len(often) > 20
    learnt = model.user_bias.weight.detach().numpy()[often, 0]
    assert spearmanr(learnt, clicks[often] / shown[often]).statistic > 0.7  # 0.87-0.89 measured (seeds 0, 1)
