"""The trainer: it learns, keeps the best checkpoint, resumes exactly, and loads safely."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dacdr import metrics
from dacdr.config import TrainConfig
from dacdr.data.batches import BatchGatherer
from dacdr.evaluation import predict
from dacdr.models import create_model
from dacdr.training.checkpoint import CheckpointError, load_model
from dacdr.training.trainer import Trainer


def _trainer(prepared, tmp_path, name="DACDR", **overrides):
    cfg = TrainConfig(**({"epochs": 3, "batch_size": 256, "progress": False, "seed": 0} | overrides))
    torch.manual_seed(cfg.seed)
    model = create_model(name, prepared.spec, dim=16, **({"heads": 2} if name.startswith("DACDR") else {}))
    return Trainer(prepared, model, name, cfg, tmp_path)


@pytest.fixture
def two_threads():
    """Pin torch's thread count: float reductions (and so a short run's outcome) depend on it, and other tests
    (the in-process service) change it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["DACDR", "DNN-multi"])
def test_short_training_beats_a_constant_predictor(name, tiny_prepared, tmp_path, two_threads):
    """A few epochs on the tiny world rank test impressions better than chance and predict them better than the
    training base rate. The tiny world has only ~25 cold-start clicks per target: the cold-start AUC is pooled
    over the targets and held to a lower bar."""
    trainer = _trainer(tiny_prepared, tmp_path, name, epochs=4, lr=3e-3)
    trainer.fit()
    results = trainer.evaluate()
    s, split = tiny_prepared.samples, tiny_prepared.split
    preds = predict(trainer.model, trainer.gatherer, split.test)
    labels = s["label"][split.test]
    cold = split.test_cold
    assert metrics.auc(labels, preds) > 0.55
    assert metrics.auc(labels[cold], preds[cold]) > 0.52
    constant = metrics.logloss(labels, np.full(len(labels), s["label"][split.train_target].mean()))
    assert metrics.logloss(labels, preds) < constant
    assert set(results["test"]["cold"]) == set(tiny_prepared.spec.target_domains)
    assert (tmp_path / "results.json").exists() and (tmp_path / "history.json").exists()


def test_best_checkpoint_round_trip(handmade_prepared, tmp_path):
    trainer = _trainer(handmade_prepared, tmp_path, epochs=2)
    trainer.fit()
    model, desc = load_model(tmp_path)
    assert desc["name"] == "DACDR"
    g = BatchGatherer(handmade_prepared)
    idx = handmade_prepared.split.test
    best = create_model("DACDR", handmade_prepared.spec, dim=16, heads=2)
    best.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(predict(model, g, idx), predict(best, g, idx))
    history = json.loads((tmp_path / "history.json").read_text())
    best_epoch = int(np.argmax([h["valid_score"] for h in history]))
    # the saved model is the best epoch's, so re-scoring validation reproduces the best score
    trainer.model.load_state_dict(model.state_dict())
    score, _ = trainer.validation_score()
    assert score == pytest.approx(history[best_epoch]["valid_score"], abs=1e-6)


def _crash_in_epoch(monkeypatch, n: int):
    """Make the n-th training epoch raise KeyboardInterrupt (an interrupted run); returns the real epoch method."""
    real_epoch = Trainer._train_epoch
    calls = {"n": 0}

    def crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real_epoch(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_epoch", crash)
    return real_epoch


def test_resume_after_interruption_replays_exactly(handmade_prepared, tmp_path, monkeypatch):
    full = _trainer(handmade_prepared, tmp_path / "full", epochs=3, patience=10)
    full.fit()

    interrupted = _trainer(handmade_prepared, tmp_path / "cut", epochs=3, patience=10)
    real_epoch = _crash_in_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    monkeypatch.setattr(Trainer, "_train_epoch", real_epoch)
    resumed = _trainer(handmade_prepared, tmp_path / "cut", epochs=3, patience=10)
    history = resumed.fit()
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


@pytest.mark.parametrize("crash_at", [3, 4])
def test_checkpoint_every_n_epochs_still_resumes_exactly(handmade_prepared, tmp_path, monkeypatch, crash_at):
    """`checkpoint_every=2` over 4 epochs writes resume/ after epochs 2 and 4 (and at the end); a run cut in
    epoch 3 or 4 replays from epoch 2 to the same weights as an uninterrupted one."""
    import dacdr.training.trainer as trainer_module

    full = _trainer(handmade_prepared, tmp_path / "full", epochs=4, patience=10, checkpoint_every=2)
    saves = []
    real_save = trainer_module.save_checkpoint
    monkeypatch.setattr(trainer_module, "save_checkpoint",
                        lambda d, m, n, o, state: saves.append(state["epoch"]) or real_save(d, m, n, o, state))
    full.fit()
    assert saves == [2, 4, 0]  # the last: the finished run (state reset after the phase)
    assert len(json.loads((tmp_path / "full" / "history.json").read_text())) == 4

    cut = _trainer(handmade_prepared, tmp_path / "cut", epochs=4, patience=10, checkpoint_every=2)
    real_epoch = _crash_in_epoch(monkeypatch, crash_at)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    monkeypatch.setattr(Trainer, "_train_epoch", real_epoch)
    resumed = _trainer(handmade_prepared, tmp_path / "cut", epochs=4, patience=10, checkpoint_every=2)
    assert [h["epoch"] for h in resumed.fit()] == [1, 2, 3, 4]
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_checkpoint_every_writes_after_an_early_stop(handmade_prepared, tmp_path, monkeypatch):
    """An early stop between two `checkpoint_every` marks still writes resume/: the phase is finished there."""
    import dacdr.training.trainer as trainer_module

    trainer = _trainer(handmade_prepared, tmp_path, epochs=10, patience=0, checkpoint_every=100)
    saves = []
    real_save = trainer_module.save_checkpoint
    monkeypatch.setattr(trainer_module, "save_checkpoint",
                        lambda d, m, n, o, state: saves.append(state["epoch"]) or real_save(d, m, n, o, state))
    scores = iter([0.6, 0.7, 0.5, 0.4])  # AUC: better, then worse -> stop after epoch 3 (patience 0)
    monkeypatch.setattr(Trainer, "validation_score", lambda self: (s := next(scores), {"auc": s}))
    history = trainer.fit()
    assert len(history) == 3 and saves == [3, 0]


def test_corrupt_or_missing_checkpoint_fails_clearly(handmade_prepared, tmp_path):
    _trainer(handmade_prepared, tmp_path, epochs=1).fit()
    weights = tmp_path / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path)
    weights.write_bytes(blob)
    desc = json.loads((tmp_path / "model.json").read_text())
    desc["params"]["dim"] = 8
    (tmp_path / "model.json").write_text(json.dumps(desc))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="model.json"):
        load_model(tmp_path)
    (tmp_path / "model.json").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path)


def test_weights_load_without_pickle(handmade_prepared, tmp_path):
    _trainer(handmade_prepared, tmp_path, epochs=1).fit()
    blob = (tmp_path / "model.safetensors").read_bytes()
    n = int.from_bytes(blob[:8], "little")  # safetensors: a header length, then a JSON header (no pickle opcodes)
    header = json.loads(blob[8 : 8 + n])
    assert {k for k in header if k != "__metadata__"} == set(load_model(tmp_path)[0].state_dict())
    blob = torch.load(tmp_path / "resume" / "optimizer.pt", weights_only=True)
    assert "optimizer" in blob


def test_device_choice(handmade_prepared, tmp_path):
    from dacdr.training.trainer import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            _trainer(handmade_prepared, tmp_path, device="cuda")


def test_validation_selects_on_the_mean_of_per_target_aucs(tiny_prepared, tmp_path):
    """With several targets, pooled AUC would also reward the targets' base rates; selection uses the mean of
    the per-target AUCs (computed here with the reference metric)."""
    trainer = _trainer(tiny_prepared, tmp_path, "DNN-multi")
    score, vm = trainer.validation_score()
    idx = tiny_prepared.split.valid
    preds = predict(trainer.model, trainer.gatherer, idx)
    labels, domains = tiny_prepared.samples["label"][idx], tiny_prepared.samples["domain"][idx]
    per_target = [roc_auc_score(labels[domains == d], preds[domains == d]) for d in np.unique(domains)]
    assert len(per_target) == 3
    assert score == pytest.approx(np.mean(per_target), abs=1e-9) == vm["auc_domain_mean"]
    assert vm["auc"] == pytest.approx(roc_auc_score(labels, preds), abs=1e-9)
