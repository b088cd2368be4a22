"""`assemble`, the one place model inputs are built (training, evaluation, streaming and serving)."""

from __future__ import annotations

import numpy as np
import torch

from dacdr.data.batches import BatchGatherer, assemble, pack_histories


def test_histories_are_right_aligned_padded_masked_and_cut_to_the_last_events():
    a = np.array([[11, 1], [12, 1], [13, 2]], dtype=np.int32)  # oldest first
    b = np.array([[21, 3]], dtype=np.int32)
    empty = np.zeros((0, 2), dtype=np.int32)
    events, start, end = pack_histories([a, b, empty], 2)
    assert events.tolist() == [[0, 0], [11, 1], [12, 1], [13, 2], [21, 3]]  # row 0 pads
    assert (start.tolist(), end.tolist()) == ([0, 3, 4], [3, 4, 4])
    out = assemble(events, start, end, 2, item=np.zeros((3, 1)), domain=np.zeros((3, 1)), label=np.ones(3))
    assert out["seq"].tolist() == [[[12, 1], [13, 2]], [[0, 0], [21, 3]], [[0, 0], [0, 0]]]
    assert out["seq_mask"].tolist() == [[True, True], [False, True], [False, False]]
    assert out["seq"].dtype == np.int64 and out["seq_mask"].dtype == np.bool_
    assert list(out) == ["seq", "seq_mask", "item", "domain", "label"]
    # a range repeated on several rows (one request's history on each of its items) is the same window
    rows = np.array([0, 0, 1, 2, 1])
    repeated = assemble(events, start, end, 4, item=None, domain=None, seq_rows=rows)
    direct = assemble(events, start[rows], end[rows], 4, item=None, domain=None)
    assert np.array_equal(repeated["seq"], direct["seq"]) and np.array_equal(repeated["seq_mask"], direct["seq_mask"])


def test_gatherer_batches_are_the_prepared_ranges(handmade_prepared):
    p = handmade_prepared
    idx = np.arange(0, p.n_samples, 7)
    batch = BatchGatherer(p).gather(torch.as_tensor(idx))
    assert {k: v.dtype for k, v in batch.items()} == {"seq": torch.long, "seq_mask": torch.bool, "item": torch.long,
                                                      "domain": torch.long, "label": torch.float32,
                                                      "user": torch.long}
    events = np.stack([p.events[f] for f in p.spec.sequence_fields], axis=1)
    for row, i in enumerate(idx):
        s, e = p.samples["seq_start"][i], p.samples["seq_end"][i]
        n = e - s
        assert int(batch["seq_mask"][row].sum()) == n and not batch["seq_mask"][row, : p.spec.max_len - n].any()
        assert np.array_equal(batch["seq"][row, p.spec.max_len - n :].numpy(), events[s:e])
        assert not batch["seq"][row, : p.spec.max_len - n].any()
    assert np.array_equal(batch["item"].numpy(), p.item_table[p.samples["item"][idx]])
