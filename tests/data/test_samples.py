"""The sample builder: sequences hold only the past, cold-start users stay cold, builds are cached."""

from __future__ import annotations

import numpy as np
import pytest

from dacdr.config import DataConfig
from dacdr.data.batches import BatchGatherer
from dacdr.data.dataset import load_dataset
from dacdr.data.prepare import cache_key
from dacdr.data.prepare import prepare as data_prepare
from dacdr.data.samples import PreparedData, prepare, sequence_ranges


def _check_no_leakage(prepared: PreparedData) -> None:
    s, ev = prepared.samples, prepared.events
    lengths = s["seq_end"] - s["seq_start"]
    assert (lengths >= 0).all() and (lengths <= prepared.spec.max_len).all()
    # every event in a sample's range belongs to the same user and is strictly older than the sample
    for i in np.flatnonzero(lengths > 0):
        rng = slice(s["seq_start"][i], s["seq_end"][i])
        assert (ev["user"][rng] == s["user"][i]).all()
        assert (ev["timestamp"][rng] < s["timestamp"][i]).all()
    # and the range is the *most recent* L: the event just after the range is not older than the sample
    nxt = s["seq_end"]
    has_next = nxt < len(ev["user"])
    same_user = has_next.copy()
    same_user[has_next] = ev["user"][nxt[has_next]] == s["user"][has_next]
    assert (ev["timestamp"][nxt[same_user]] >= s["timestamp"][same_user]).all()


def test_sequences_hold_only_earlier_events(handmade_prepared):
    _check_no_leakage(handmade_prepared)


def test_sequences_hold_only_earlier_events_synthetic(tiny_prepared):
    _check_no_leakage(tiny_prepared)


def test_sequence_is_the_most_recent_max_len_events():
    # one user, events at t = 0..9; a sample at t = 7 with L = 3 sees events 4, 5, 6
    ev_user, ev_ts = np.zeros(10, dtype=np.int64), np.arange(10, dtype=np.int64)
    start, end = sequence_ranges(ev_user, ev_ts, np.array([0, 0, 1]), np.array([7, 0, 5]), max_len=3)
    assert (start[0], end[0]) == (4, 7)
    assert start[1] == end[1]  # nothing before t = 0
    assert start[2] == end[2]  # user 1 has no events


def test_ties_are_not_leaked():
    # an event at exactly the sample's timestamp is not "before" it
    start, end = sequence_ranges(np.zeros(3, dtype=np.int64), np.array([1, 5, 5]), np.array([0]), np.array([5]), 50)
    assert end[0] - start[0] == 1


def _cold_start_check(prepared: PreparedData) -> None:
    s, split = prepared.samples, prepared.split
    cold = split.test[split.test_cold]
    assert len(cold) > 0
    cold_pairs = set(zip(s["user"][cold].tolist(), s["domain"][cold].tolist(), strict=True))
    for part in (split.train_target, split.train_source, split.valid):
        pairs = set(zip(s["user"][part].tolist(), s["domain"][part].tolist(), strict=True))
        assert not cold_pairs & pairs
    # no training or validation sample is from the test period
    test_start = s["timestamp"][split.test].min()
    for part in (split.train_target, split.train_source, split.valid):
        assert (s["timestamp"][part] < test_start).all()
    # validation users are removed from the training rows of that domain
    v_pairs = set(zip(s["user"][split.valid].tolist(), s["domain"][split.valid].tolist(), strict=True))
    t_pairs = set(zip(s["user"][split.train_target].tolist(), s["domain"][split.train_target].tolist(), strict=True))
    assert not v_pairs & t_pairs


def test_cold_start_users_have_no_target_rows_in_training(handmade_prepared):
    _cold_start_check(handmade_prepared)
    # the handmade world makes users 0..9 cold-start in target_a
    s, split = handmade_prepared.samples, handmade_prepared.split
    a = handmade_prepared.vocabs["domain"].lookup("target_a")
    cold_a = split.test[split.test_cold & (s["domain"][split.test] == a)]
    users = {handmade_prepared.vocabs["user"].values[u - 2] for u in s["user"][cold_a]}
    assert {str(u) for u in range(10)} <= users


def test_cold_start_users_synthetic(tiny_prepared):
    _cold_start_check(tiny_prepared)


def test_split_covers_each_target_row_once(handmade_prepared):
    s, split = handmade_prepared.samples, handmade_prepared.split
    target_rows = np.flatnonzero(~s["is_source"])
    parts = np.concatenate([split.train_target, split.valid, split.test])
    assert np.array_equal(np.sort(parts), target_rows)


def test_batch_shapes_and_masks(handmade_prepared):
    g = BatchGatherer(handmade_prepared)
    idx = np.arange(0, handmade_prepared.n_samples, 7)
    b = g.gather(idx)
    spec = handmade_prepared.spec
    n = len(idx)
    assert b["seq"].shape == (n, spec.max_len, len(spec.sequence_fields))
    assert b["seq_mask"].shape == (n, spec.max_len)
    assert b["item"].shape == (n, len(spec.item_fields))
    assert b["domain"].shape == (n, len(spec.domain_fields))
    s = handmade_prepared.samples
    lengths = (s["seq_end"] - s["seq_start"])[idx]
    assert (b["seq_mask"].sum(1).numpy() == lengths).all()
    assert (b["seq"][~b["seq_mask"]] == 0).all()  # padding is index 0 everywhere
    assert (b["seq"][b["seq_mask"]] >= 2).all()  # real tokens never collide with padding / OOV
    # right-aligned: the most recent behaviour is the last position
    full = lengths > 0
    assert b["seq_mask"][full.nonzero()[0], -1].all()


def test_prepare_is_deterministic_and_cached(handmade_path, tmp_path):
    a = prepare(load_dataset(handmade_path), max_len=8)
    b = prepare(load_dataset(handmade_path), max_len=8)
    for k in a.samples:
        np.testing.assert_array_equal(a.samples[k], b.samples[k])
    cfg = DataConfig(path=str(handmade_path), cache_dir=str(tmp_path), max_len=8)
    c1 = data_prepare(cfg)
    assert len(list(tmp_path.glob("samples-*"))) == 1
    c2 = data_prepare(cfg)
    np.testing.assert_array_equal(c1.samples["seq_end"], c2.samples["seq_end"])
    np.testing.assert_array_equal(c1.split.test, a.split.test)
    data_prepare(cfg.model_copy(update={"max_len": 4}))  # another key, another entry
    assert len(list(tmp_path.glob("samples-*"))) == 2


def test_the_cache_key_covers_the_whole_data_section_and_nothing_else(handmade_path, tmp_path):
    """One config, one cache entry, whoever calls: every sample-shaping field changes the key; where the
    data lives does not."""
    base = DataConfig(path=str(handmade_path), max_len=8)
    key = cache_key(base, handmade_path)
    assert cache_key(DataConfig(path=str(handmade_path), max_len=8, valid_share=0.1), handmade_path) == key
    assert cache_key(base.model_copy(update={"cache_dir": str(tmp_path)}), handmade_path) == key
    for field, value in (("valid_share", 0.2), ("split_seed", 1), ("source_sample_rate", 0.5),
                         ("sequence_cutoff", "all"), ("min_count", {"item": 2}), ("protocol", "users")):
        assert cache_key(base.model_copy(update={field: value}), handmade_path) != key, field


def test_corrupt_cache_is_rebuilt(handmade_path, tmp_path):
    cfg = DataConfig(path=str(handmade_path), cache_dir=str(tmp_path), max_len=8)
    data_prepare(cfg)
    entry = next(tmp_path.glob("samples-*"))
    (entry / "arrays.npz").write_bytes(b"garbage")
    again = data_prepare(cfg, log=lambda m: None)
    assert again.n_samples > 0


def test_unknown_protocol(handmade_path):
    with pytest.raises(ValueError, match="unknown protocol"):
        prepare(load_dataset(handmade_path), protocol="nope")


def test_run_config_sequence_cutoff_reaches_the_sample_builder(handmade_path, tmp_path):
    """`dacdr train` / `dacdr evaluate` build the split the config asks for, PTUPCDR's whole-history mode too."""
    before = data_prepare(DataConfig(path=str(handmade_path), max_len=8, cache_dir=str(tmp_path)))
    whole = data_prepare(DataConfig(path=str(handmade_path), max_len=8, cache_dir=str(tmp_path),
                                    sequence_cutoff="all"))
    assert (whole.samples["seq_end"] >= before.samples["seq_end"]).all()
    assert (whole.samples["seq_end"] > before.samples["seq_end"]).any()
    with pytest.raises(ValueError, match="sequence_cutoff"):
        data_prepare(DataConfig(path=str(handmade_path), streaming=True, sequence_cutoff="all"))
