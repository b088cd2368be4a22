"""On a world where only some behaviours matter, DACDR's attention learns to select them.

The tiny mechanism world (docs/synthetic.md#the-mechanism-world) makes a click depend on how close the
candidate is to the user's recent behaviours *of the candidate's category*. A trained item-level step must
put more weight on those behaviours than their share of the history; a uniform one puts exactly their share
(checked on the pooling ablation, so the bar is not met by construction).
"""

from __future__ import annotations

import pytest
import torch

from dacdr.config import DataConfig, TrainConfig
from dacdr.data.prepare import prepare
from dacdr.data.synthetic import generate
from dacdr.models import create_model
from dacdr.reporting.attention import relevance_mass
from dacdr.training.trainer import Trainer


@pytest.fixture(scope="module")
def mechanism(tmp_path_factory):
    path = generate("mechanism-tiny", tmp_path_factory.mktemp("mech") / "data", seed=0)
    return path, prepare(DataConfig(path=str(path), max_len=30))


@pytest.mark.slow
def test_item_level_attention_beats_the_share_of_the_relevant_behaviours(mechanism, tmp_path):
    path, prepared = mechanism
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = create_model("DACDR", prepared.spec, dim=16)
        cfg = TrainConfig(epochs=2, batch_size=256, lr=1e-2, patience=2, progress=False, seed=0)
        Trainer(prepared, model, "DACDR", cfg, tmp_path / "run").fit()
    finally:
        torch.set_num_threads(threads)
    cold = prepared.split.test[prepared.split.test_cold]
    trained = relevance_mass(model, prepared, path, cold)
    uniform = relevance_mass(create_model("DACDR w/o DA&IA", prepared.spec, dim=16), prepared, path, cold)
    for domain, m in trained.items():
        assert uniform[domain]["item_mass"] == pytest.approx(uniform[domain]["item_share"], abs=1e-6)
        assert uniform[domain]["domain_mass"] == pytest.approx(uniform[domain]["domain_share"], abs=1e-6)
        assert m["item_mass"] > m["item_share"] + 0.02, (domain, m)
