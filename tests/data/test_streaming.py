"""The out-of-core pipeline gives the in-memory samples, and its stream splits them across ranks x workers."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dacdr.config import DataConfig
from dacdr.data.batches import BatchGatherer
from dacdr.data.dataset import load_dataset
from dacdr.data.prepare import prepare as data_prepare
from dacdr.data.samples import prepare
from dacdr.data.streaming import ShardStream
from dacdr.distributed import current


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def both(tiny_path, tmp_path_factory):
    opts = {"max_len": 20, "source_sample_rate": 0.5, "min_count": {"item": 5}}
    memory = prepare(load_dataset(tiny_path), **opts)
    stream = data_prepare(DataConfig(path=str(tiny_path), cache_dir=str(tmp_path_factory.mktemp("cache")),
                                     streaming=True, shard_rows=1000, sort_buckets=3, **opts), log=_quiet)
    return memory, stream


def _shard_rows(stream, kind: str) -> np.ndarray:
    return pq.read_table(stream.directory / f"{kind}.parquet", columns=["row"])["row"].to_numpy()


def test_streaming_prepare_matches_the_in_memory_samples(both):
    memory, stream = both
    split = memory.split
    for kind, expected in (("train_target", split.train_target), ("train_source", split.train_source)):
        rows = _shard_rows(stream, kind)
        assert np.array_equal(np.sort(rows), expected), kind  # same samples, shuffled
        assert not np.array_equal(rows, expected)
    assert stream.shards["train_target"][:-1] == [1000] * (len(stream.shards["train_target"]) - 1)
    ev = stream.eval_samples
    assert np.array_equal(ev["row"][: stream.n_valid], split.valid)
    assert np.array_equal(ev["row"][stream.n_valid :], split.test)
    assert np.array_equal(stream.test_cold, split.test_cold)
    assert stream.spec == memory.spec
    assert np.array_equal(stream.item_table, memory.item_table)
    # The same test samples gather the same model inputs (sequences from the memory-mapped events).
    b_mem = BatchGatherer(memory).gather(split.test)
    b_stream = stream.eval_gatherer().gather(np.arange(stream.n_valid, stream.n_valid + len(split.test)))
    for key in b_mem:
        assert torch.equal(b_mem[key], b_stream[key]), key
    assert stream.label_mean("targets") == pytest.approx(memory.samples["label"][split.train_target].mean())


def test_the_stream_partitions_row_groups_over_ranks_and_workers(both):
    _, stream = both
    rows_per_slot = []
    for rank in range(2):
        s = ShardStream(stream.directory, {"train_target": stream.shards["train_target"]}, stream.item_table,
                        stream.domain_table, stream.spec.max_len, batch_size=300, epoch_seed=7, rank=rank, world=2)
        for worker in range(2):
            groups = s.assignment(rank, worker, 2)
            rows_per_slot.append(sum(stream.shards["train_target"][g] for g in groups))
        batches = list(s)  # main process: worker 0 of 1, i.e. all of this rank's groups
        assert len(batches) == s.batches_of_rank(rank, 1)
        assert all(len(b["label"]) == 300 for b in batches[:-1])
        assert batches[0]["seq"].dtype == torch.long
    assert sum(rows_per_slot) == sum(stream.shards["train_target"])  # every row group exactly once

    steps, it = stream.train_batches("targets", 256, epoch_seed=1, ctx=current())
    labels = torch.cat([b["label"] for b in it])
    assert steps == -(-len(labels) // 256) and len(labels) == stream.n_train("targets")
    # Another epoch seed visits the row groups in another order.
    _, it2 = stream.train_batches("targets", 256, epoch_seed=2, ctx=current())
    assert not torch.equal(labels, torch.cat([b["label"] for b in it2]))


def test_streaming_refuses_the_user_protocol_with_a_clear_error(tiny_path, tmp_path):
    with pytest.raises(ValueError, match="supports protocol 'time' only"):
        data_prepare(DataConfig(path=str(tiny_path), cache_dir=str(tmp_path), streaming=True, protocol="users"),
                     log=_quiet)
