"""Protocol P3: sampled candidates and ranking metrics against hand-computed ranks."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from dacdr.data.dataset import load_dataset
from dacdr.data.loaders import convert, convert_config
from dacdr.data.samples import prepare
from dacdr.models.base import RecModel
from dacdr.ranking import ranking_report, sample_candidates
from tests.data.loaders.test_cdrib import write_cdrib


@pytest.fixture(scope="module")
def cdrib_prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cdrib")
    files = write_cdrib(root / "raw")
    cfg = convert_config(format="cdrib", name="c", source="game", targets=["video"], files=files,
                        n_shared_users=3, train_negatives=1, valid_negatives=3)
    return prepare(load_dataset(convert(cfg, root / "ds", log=lambda _: None)), protocol="periods", max_len=8)


class ItemScore(RecModel):
    """Scores an item by a fixed table: the test controls every score."""

    inputs: ClassVar[tuple[str, ...]] = ("item",)

    def __init__(self, spec, scores: torch.Tensor):
        super().__init__(spec)
        self.table = scores

    def forward(self, item: torch.Tensor) -> torch.Tensor:
        return self.table[item[:, 0]]


def _test_positives(prepared):
    split, s = prepared.split, prepared.samples
    return split.test[s["label"][split.test] > 0]


def test_candidates_are_unseen_training_items(cdrib_prepared):
    p = cdrib_prepared
    s = p.samples
    idx = _test_positives(p)
    cands = sample_candidates(p, idx, n_negatives=10, seed=3)
    train = p.split.train_target[s["label"][p.split.train_target] > 0]
    pool = set(s["item"][train].tolist())
    for row, i in enumerate(idx):
        u = s["user"][i]
        own = set(s["item"][(s["user"] == u) & ~s["is_source"] & (s["label"] > 0)].tolist())
        assert set(cands[row].tolist()) <= pool
        assert not set(cands[row].tolist()) & own
        assert len(set(cands[row].tolist())) == 10  # without replacement
    assert np.array_equal(cands, sample_candidates(p, idx, n_negatives=10, seed=3))  # fixed by seed
    assert not np.array_equal(cands, sample_candidates(p, idx, n_negatives=10, seed=4))


def test_too_many_negatives_is_a_clear_error(cdrib_prepared):
    with pytest.raises(ValueError, match="cannot draw"):
        sample_candidates(cdrib_prepared, _test_positives(cdrib_prepared), n_negatives=10_000)


def test_ranking_metrics_match_hand_computed_ranks(cdrib_prepared):
    p = cdrib_prepared
    idx = _test_positives(p)
    assert len(idx) == 3
    s = p.samples
    n_items = len(p.item_table)
    # Scores: the positive items get 0.5; candidates are three chosen items with scores 0.9 / 0.1 / 0.5.
    scores = torch.zeros(n_items)
    scores[torch.as_tensor(s["item"][idx])] = 0.5
    hi, lo, tie = 20, 21, 22  # item vocabulary rows used only as candidates here
    scores[hi], scores[lo], scores[tie] = 0.9, 0.1, 0.5
    cands = np.array([[lo, lo, lo], [hi, lo, lo], [hi, hi, tie]])
    # ranks: row 0 beats all -> 1; row 1 below one -> 2; row 2 below two and tied with one (ties count
    # against the positive) -> 4
    report = ranking_report(ItemScore(p.spec, scores), p, indices=idx, candidates=cands)
    m = report["video"]
    ranks = np.array([1, 2, 4])
    assert m["n"] == 3
    assert m["mrr"] == pytest.approx(np.mean(1 / ranks))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@5"] == pytest.approx(1.0)
    assert m["ndcg@5"] == pytest.approx(np.mean(1 / np.log2(ranks + 1)))
    assert m["ndcg@10"] == m["ndcg@5"]


def test_constant_model_gets_the_worst_rank(cdrib_prepared):
    p = cdrib_prepared
    model = ItemScore(p.spec, torch.zeros(len(p.item_table)))
    m = ranking_report(model, p, n_negatives=5, seed=0)["video"]
    assert m["mrr"] == pytest.approx(1 / 6) and m["hr@5"] == 0.0
