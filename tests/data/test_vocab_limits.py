"""Bounded embedding tables: a frequency threshold (rare values share the OOV row) and hashing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from dacdr.data.dataset import load_dataset
from dacdr.data.features import FIRST_ID, OOV, PAD, frequency_map, stable_hash
from dacdr.data.samples import prepare
from dacdr.distributed.memory import embedding_tables, table_memory_report
from dacdr.models import create_model


def test_frequency_map_keeps_frequent_values_and_sends_rare_ones_to_oov():
    counts = np.array([9, 9, 5, 1, 3, 0])  # PAD and OOV counts never matter
    assert frequency_map(counts, 2).tolist() == [PAD, OOV, 2, OOV, 3, OOV]
    with pytest.raises(ValueError, match="min_count"):
        frequency_map(counts, 0)


def test_stable_hash_is_blake2b_not_the_salted_builtin():
    expected = int.from_bytes(hashlib.blake2b(b"item-42", digest_size=8).digest(), "little") % 1000
    assert stable_hash(["item-42"], 1000).tolist() == [expected]


@pytest.fixture(scope="module")
def tiny_data(tiny_path):
    return load_dataset(tiny_path)


def test_min_count_bounds_the_item_table_and_keeps_side_features(tiny_data):
    plain = prepare(tiny_data, max_len=20)
    limited = prepare(tiny_data, max_len=20, min_count={"item": 40})
    s = plain.samples
    counted = s["timestamp"] < tiny_data.spec.test_start
    freq = np.bincount(s["item"][counted], minlength=len(plain.vocabs["item"]))
    n_kept = int((freq[FIRST_ID:] >= 40).sum())
    assert 0 < n_kept < len(plain.vocabs["item"]) - FIRST_ID
    assert limited.spec.vocab_sizes["item"] == n_kept + FIRST_ID
    rare = np.flatnonzero(freq < 40)
    rare = rare[rare >= FIRST_ID]
    assert (limited.item_table[rare, 0] == OOV).all()
    # A rare item loses only its own row: its category and brand tokens are kept.
    assert np.array_equal(limited.item_table[:, 1:], plain.item_table[:, 1:])
    # Sequences carry the same mapped ids; samples, ranges and split are untouched.
    assert np.array_equal(limited.events["item"], limited.item_table[plain.item_table[:, 0], 0][plain.events["item"]])
    assert np.array_equal(limited.samples["seq_end"], s["seq_end"])
    assert np.array_equal(limited.split.test, plain.split.test)
    assert plain.embedding_maps == {} and set(limited.embedding_maps) == {"item"}


def test_hash_buckets_bound_the_table_deterministically(tiny_data):
    a = prepare(tiny_data, max_len=20, hash_buckets={"item": 64, "brand": 8})
    b = prepare(tiny_data, max_len=20, hash_buckets={"item": 64, "brand": 8})
    assert a.spec.vocab_sizes["item"] <= 64 + FIRST_ID and a.spec.vocab_sizes["brand"] <= 8 + FIRST_ID
    assert np.array_equal(a.item_table, b.item_table)
    assert a.item_table[:, 0].max() < a.spec.vocab_sizes["item"]
    model = create_model("DACDR", a.spec, dim=8, heads=2)
    rows = {t.name.rsplit(".", 1)[-1]: t.rows for t in embedding_tables(model)}
    assert rows["item"] == a.spec.vocab_sizes["item"]
    assert "embedding tables:" in table_memory_report(model)


def test_bad_limits_name_the_option_and_the_field(tiny_data):
    with pytest.raises(ValueError, match=r"data.min_count: unknown field\(s\) \['colour'\]"):
        prepare(tiny_data, max_len=20, min_count={"colour": 3})
    with pytest.raises(ValueError, match="both set for \\['item'\\]"):
        prepare(tiny_data, max_len=20, min_count={"item": 3}, hash_buckets={"item": 10})
