"""Two CPU processes (gloo) train with DistributedDataParallel: same weights on both ranks, a falling loss,
metrics on the union of the ranks' predictions, files written once, resume, and the streaming pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dacdr.config import DataConfig, TrainConfig
from dacdr.data.prepare import prepare
from dacdr.distributed import current
from dacdr.distributed.launch import spawn
from dacdr.evaluation import score_metrics
from dacdr.models import create_model
from dacdr.training.trainer import Trainer


def _fit(prepared, run_dir: Path, epochs: int, resume: bool):
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=5e-3, patience=10, progress=False, seed=0,
                      num_threads=1, max_steps_per_epoch=10, train_on="targets")
    torch.manual_seed(0)
    model = create_model("DACDR", prepared.spec, dim=8, heads=2, encoder_hidden=(16,), predictor_hidden=(16,))
    trainer = Trainer(prepared, model, "DACDR", cfg, run_dir)
    return trainer, trainer.fit(resume=resume)


def _stream_cfg(path: str) -> DataConfig:
    return DataConfig(path=path, max_len=20, streaming=True, shard_rows=500)


def _worker(prepared, stream_dir: str, out: str) -> None:
    """One rank: train in memory (then resume the finished run), then from the streaming shards."""
    out_dir, rank = Path(out), current().rank
    trainer, history = _fit(prepared, out_dir / "run", epochs=3, resume=False)
    _, valid = trainer.validation_score()
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, str(out_dir / f"w{rank}.safetensors"))
    _, resumed_history = _fit(prepared, out_dir / "run", epochs=3, resume=True)  # every rank reads rank 0's state
    stream, stream_history = _fit(prepare(_stream_cfg(stream_dir), log=lambda _: None),
                                  out_dir / "stream", epochs=3, resume=False)
    save_file({k: v.contiguous() for k, v in stream.model.state_dict().items()}, str(out_dir / f"s{rank}.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps({
        "world": current().world, "history": history, "valid": valid,
        "resumed_history": resumed_history, "stream_history": stream_history,
    }))


@pytest.mark.slow
def test_two_processes_train_the_same_model(tiny_prepared, tiny_path, tmp_path):
    prepare(_stream_cfg(str(tiny_path)), log=lambda _: None)  # built once, read by both
    spawn(_worker, 2, tiny_prepared, str(tiny_path), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]

    for prefix in ("w", "s"):  # in-memory and streaming runs: identical weights on both ranks
        w0, w1 = (load_file(str(tmp_path / f"{prefix}{r}.safetensors")) for r in range(2))
        assert w0.keys() == w1.keys()
        assert all(torch.equal(w0[k], w1[k]) for k in w0), prefix
    for key in ("history", "stream_history"):
        losses = [h["loss"] for h in ranks[0][key]]
        assert min(losses[1:]) < losses[0], (key, losses)  # it learns (later epochs may wobble on tiny data)
        assert ranks[0][key] == ranks[1][key]  # loss and counts reduced over ranks: the same record

    # Validation metrics are those of all predictions together, not a mean of per-rank metrics.
    model = create_model("DACDR", tiny_prepared.spec, dim=8, heads=2, encoder_hidden=(16,), predictor_hidden=(16,))
    model.load_state_dict(load_file(str(tmp_path / "w0.safetensors")))
    model.eval()
    from dacdr.data.batches import BatchGatherer
    from dacdr.evaluation import predict

    idx, s = tiny_prepared.split.valid, tiny_prepared.samples
    expected = score_metrics("ctr", s["label"][idx], predict(model, BatchGatherer(tiny_prepared), idx), s["user"][idx])
    for r in ranks:
        assert np.isclose(r["valid"]["auc"], expected["auc"], atol=1e-6)
        assert np.isclose(r["valid"]["gauc"], expected["gauc"], atol=1e-6)

    # Files are written once (rank 0): one log line per epoch; resuming restores the run on every rank.
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("epoch 1:") == 1 and log.count("epoch 3:") == 1
    assert all(r["resumed_history"] == r["history"] for r in ranks)
