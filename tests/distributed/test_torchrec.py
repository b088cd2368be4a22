"""`train.embeddings: torchrec` on 2 CPU ranks (gloo): DACDR's tables in a TorchRec EmbeddingCollection sharded by
DistributedModelParallel. The loss falls, the sharded model scores exactly like the same weights gathered into a
plain model, checkpoints are plain model files, and a run resumes on another number of ranks.

Needs the `torchrec` extra (docs/scaling.md); skipped without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("torchrec", reason="the torchrec extra is not installed (docs/scaling.md)")

from dacdr.config import TrainConfig  # noqa: E402
from dacdr.distributed import current  # noqa: E402
from dacdr.distributed.launch import spawn  # noqa: E402
from dacdr.models import create_model  # noqa: E402
from dacdr.training.checkpoint import load_model  # noqa: E402
from dacdr.training.trainer import Trainer  # noqa: E402

# with the domain prior on step 1: its domain ids are handed over beside the sharded lookups
MODEL = {"dim": 8, "heads": 2, "encoder_hidden": (16,), "predictor_hidden": (16,), "domain_prior": True}


def _trainer(prepared, run_dir: Path, epochs: int, sharding: dict[str, str]) -> Trainer:
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=5e-3, patience=10, progress=False, seed=0, num_threads=1,
                      max_steps_per_epoch=10, train_on="targets", embeddings="torchrec", sharding=sharding)
    torch.manual_seed(0)
    model = create_model("DACDR", prepared.spec, **MODEL)
    return Trainer(prepared, model, "DACDR", cfg, run_dir)


class Interrupted(RuntimeError):
    pass


def _worker(prepared, out: str, sharding: dict[str, str], epochs: int, resume: bool, tag: str,
            stop_after: int | None = None) -> None:
    out_dir, ctx = Path(out), current()
    trainer = _trainer(prepared, out_dir / "run", epochs, sharding)
    if stop_after is not None:  # the run is killed when epoch `stop_after + 1` starts, after its checkpoints
        train_epoch = trainer._train_epoch

        def interrupted(phase, idx, opt, gen, epoch):
            if epoch >= stop_after:
                raise Interrupted(f"stopped before epoch {epoch + 1}")
            return train_epoch(phase, idx, opt, gen, epoch)

        trainer._train_epoch = interrupted
    history = trainer.fit(resume=resume)
    idx = prepared.split.valid
    sharded_preds = trainer._predict(idx)
    plain = trainer._checkpoint_model()  # gathered on rank 0
    if ctx.rank == 0:
        save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(out_dir / f"{tag}-gathered.safetensors"))
        np.save(out_dir / f"{tag}-preds.npy", sharded_preds)
    (out_dir / f"{tag}-rank{trainer.dist.rank}.json").write_text(json.dumps({
        "world": trainer.dist.world, "history": history, "plan": trainer.sharded.plan_report(),
        "bytes": trainer.sharded.embedding_bytes(trainer.dist.rank),
    }))


def _plain_predictions(prepared, weights: dict[str, torch.Tensor]) -> np.ndarray:
    from dacdr.data.batches import BatchGatherer
    from dacdr.evaluation import predict

    model = create_model("DACDR", prepared.spec, **MODEL)
    model.load_state_dict(weights)
    model.eval()
    return predict(model, BatchGatherer(prepared), prepared.split.valid)


@pytest.mark.parametrize("item_sharding", ["table_wise", "row_wise"])
def test_sharded_training_matches_gathered_plain_model(tiny_prepared, tmp_path, item_sharding):
    spawn(_worker, 2, tiny_prepared, str(tmp_path), {"item": item_sharding}, 3, False, "a")
    ranks = [json.loads((tmp_path / f"a-rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert f"item: {tiny_prepared.spec.vocab_sizes['item']:,} x 8, {item_sharding}" in ranks[0]["plan"]
    if item_sharding == "row_wise":  # the item table is split: each rank holds about half of its rows
        item_bytes = tiny_prepared.spec.vocab_sizes["item"] * 8 * 4
        assert all(r["bytes"] < item_bytes for r in ranks)
    losses = [h["loss"] for h in ranks[0]["history"]]
    assert min(losses[1:]) < losses[0], losses
    assert ranks[0]["history"] == ranks[1]["history"]

    # The sharded model scores like the same weights gathered into a plain nn.Embedding model.
    gathered = load_file(str(tmp_path / "a-gathered.safetensors"))
    np.testing.assert_allclose(np.load(tmp_path / "a-preds.npy"), _plain_predictions(tiny_prepared, gathered),
                               rtol=1e-5, atol=1e-6)
    # The checkpoints on disk are plain model files: they load without TorchRec wrappers.
    best, desc = load_model(tmp_path / "run")
    assert desc["name"] == "DACDR" and "embeddings.tables.item.weight" in best.state_dict()
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "TorchRec sharding plan" in log and log.count("epoch 1:") == 1


def test_sharded_run_resumes_on_another_number_of_ranks(tiny_prepared, tmp_path):
    with pytest.raises(Exception, match="stopped before epoch 3"):  # 2 ranks, interrupted after 2 epochs
        spawn(_worker, 2, tiny_prepared, str(tmp_path), {}, 3, False, "two", 2)
    two = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(two) == 2
    spawn(_worker, 1, tiny_prepared, str(tmp_path), {}, 3, True, "one")  # the same run directory on one rank
    one = json.loads((tmp_path / "one-rank0.json").read_text())
    assert one["world"] == 1
    assert one["history"][:2] == two and len(one["history"]) == 3
    assert "resuming DACDR at phase 0 epoch 2" in (tmp_path / "run" / "log.txt").read_text()
    # After the resume the one-rank model's tables are the ones it trained from rank 0's checkpoint.
    gathered = load_file(str(tmp_path / "one-gathered.safetensors"))
    np.testing.assert_allclose(np.load(tmp_path / "one-preds.npy"), _plain_predictions(tiny_prepared, gathered),
                               rtol=1e-5, atol=1e-6)


def test_cli_path_trains_and_packages(tiny_path, tmp_path):
    """`dacdr train CONFIG --nproc 2 --set train.embeddings=torchrec` (here column-wise), then `dacdr package`;
    and the same on the streaming pipeline (training only)."""
    from dacdr.config import RunConfig
    from dacdr.package import build_package, load_package
    from dacdr.recipes.train import train

    def config(streaming: bool) -> RunConfig:
        return RunConfig.model_validate({
            "data": {"path": str(tiny_path), "max_len": 20, "streaming": streaming, "shard_rows": 500,
                     "cache_dir": str(tmp_path / f"cache-{streaming}")},
            "model": {"name": "DACDR", "params": {"dim": 8, "heads": 2}},
            "train": {"epochs": 1, "batch_size": 256, "progress": False, "max_steps_per_epoch": 5,
                      "embeddings": "torchrec", "sharding": {"item": "column_wise"}},
        })

    for streaming in (True, False):
        run = tmp_path / f"run-{streaming}"
        results = train(config(streaming), nproc=2, run_dir=run)
        assert results["test"]
        log = (run / "log.txt").read_text()
        assert "TorchRec sharding plan (2 ranks, cpu)" in log and "column_wise" in log
    build_package(run, tmp_path / "pkg", log=lambda *_: None)
    package = load_package(tmp_path / "pkg")
    best, _ = load_model(run)
    for k, v in best.state_dict().items():
        assert torch.equal(package.model.state_dict()[k], v), k


def test_batches_become_jagged_without_padding(tiny_prepared):
    from dacdr.data.batches import BatchGatherer
    from dacdr.distributed.sharded import feature_keys, to_kjt

    spec = tiny_prepared.spec
    batch = BatchGatherer(tiny_prepared).gather(tiny_prepared.split.valid[:16])
    kjt = to_kjt(batch, spec)
    assert kjt.keys() == feature_keys(spec)
    lengths = kjt.to_dict()
    seq_len = batch["seq_mask"].sum(1)
    for j, f in enumerate(spec.sequence_fields):  # only the unmasked positions, oldest first
        jt = lengths[f"seq_{f}"]
        assert torch.equal(jt.lengths(), seq_len.to(jt.lengths().dtype))
        assert torch.equal(jt.values(), batch["seq"][..., j][batch["seq_mask"]])
    for j, f in enumerate(spec.item_fields):
        assert torch.equal(lengths[f"item_{f}"].values(), batch["item"][:, j])


def test_unsupported_models_and_fields_are_refused(tiny_prepared):
    from dacdr.distributed.sharded import ShardedEmbeddings, check_supported

    with pytest.raises(ValueError, match="supports models whose tables are one FieldEmbeddings"):
        check_supported(create_model("CMF", tiny_prepared.spec, n_users=10))
    cfg_error = pytest.raises(Exception, match="sharding")
    with cfg_error:
        TrainConfig(embeddings="torchrec", sharding={"item": "data_parallel"})
    model = create_model("DACDR", tiny_prepared.spec, **MODEL)
    with pytest.raises(ValueError, match="unknown field"):
        ShardedEmbeddings(model, torch.device("cpu"), {"no_such_field": "table_wise"})
