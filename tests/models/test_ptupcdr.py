"""PTUPCDR's speed-ups keep its function: rows sharing a history share one bridge (identical outputs and
gradients), the MF phases train on batches without histories (identical weights), and its per-phase schedule
is checked and reaches the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dacdr.config import TrainConfig
from dacdr.data.batches import BatchGatherer
from dacdr.data.samples import IndexedSet
from dacdr.models import create_model
from dacdr.models import ptupcdr as ptupcdr_module
from dacdr.models.ptupcdr import check_schedule, distinct_rows
from dacdr.recipes.bench import model_params
from dacdr.training.checkpoint import load_model, save_model
from dacdr.training.trainer import Trainer


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(prepared, **params):
    torch.manual_seed(0)
    return create_model("PTUPCDR", prepared.spec, **(model_params("PTUPCDR", prepared, 8) | params))


def test_distinct_rows_finds_each_distinct_row_once():
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.integers(-1, 50, size=(40, 6)))
    x = base[torch.from_numpy(rng.integers(0, 40, size=300))]
    first, inverse = distinct_rows(x)
    assert torch.equal(x[first][inverse], x)
    assert len(first) == len({tuple(r) for r in x.tolist()})  # one per distinct row
    assert distinct_rows(base) is None  # no row repeats
    assert distinct_rows(x, max_share=0.05) is None  # ~40 distinct of 300 rows: more than 5 %


def test_a_hash_collision_gives_none_not_a_wrong_answer(monkeypatch):
    x = torch.tensor([[1, 2], [3, 4], [1, 2]])
    real = torch.randint
    monkeypatch.setattr(torch, "randint", lambda *a, **k: torch.zeros_like(real(*a, **k)))  # every row hashes to 0
    assert distinct_rows(x) is None


def test_shared_bridges_give_the_same_outputs_and_gradients(tiny_prepared, monkeypatch):
    """A batch of 600 rows over 60 (user, history) pairs: the shared path and the per-row path agree."""
    model = build(tiny_prepared)
    g = BatchGatherer(tiny_prepared)
    rows = np.flatnonzero(~tiny_prepared.samples["is_source"] & (tiny_prepared.samples["seq_end"]
                                                                  > tiny_prepared.samples["seq_start"]))[:60]
    batch = g.gather(np.random.default_rng(0).choice(rows, size=600))
    model.set_phase("meta")

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        out = model(*(batch[k] for k in model.inputs))
        (out * torch.linspace(-1, 1, len(out))).sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    calls = []
    real = ptupcdr_module.distinct_rows
    monkeypatch.setattr(ptupcdr_module, "distinct_rows", lambda x, **k: calls.append(real(x, **k)) or calls[-1])
    shared_out, shared_grads = run()
    assert calls and calls[-1] is not None and len(calls[-1][0]) <= 60  # the shared path ran
    monkeypatch.setattr(ptupcdr_module, "SHARE_FROM", 10**9)
    plain_out, plain_grads = run()
    torch.testing.assert_close(shared_out, plain_out, rtol=0, atol=0)
    assert len(shared_grads) == len(plain_grads) > 0
    for a, b in zip(shared_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_schedule_is_checked_and_sets_the_phases(tiny_prepared, tmp_path):
    schedule = {"source": {"batch_size": 64, "epochs": 2}, "meta": {"lr": 0.005}}
    model = build(tiny_prepared, schedule=schedule)
    phases = {p.name: p for p in model.phases()}
    assert (phases["source"].batch_size, phases["source"].epochs, phases["source"].lr) == (64, 2, None)
    assert (phases["target"].batch_size, phases["target"].epochs) == (None, None)
    assert phases["meta"].lr == 0.005
    assert [p.history for p in phases.values()] == [False, False, True]  # the MF phases read no history
    save_model(model, "PTUPCDR", tmp_path)
    loaded, desc = load_model(tmp_path)
    assert desc["params"]["schedule"] == {"source": {"batch_size": 64, "epochs": 2}, "meta": {"lr": 0.005}}
    assert loaded.schedule == model.schedule
    assert "schedule" not in build(tiny_prepared).params  # no schedule: model.json as before

    for bad, match in [({"bridge": {}}, "unknown phase 'bridge'"), ({"meta": {"momentum": 1}}, "unknown setting"),
                       ({"meta": {"epochs": 0}}, r"schedule.meta.epochs: expected a positive int"),
                       ({"meta": {"batch_size": 2.5}}, "positive int"), ({"meta": {"lr": True}}, "positive float"),
                       ({"meta": 3}, "expected a mapping"), ([1], "expected a mapping")]:
        with pytest.raises(ValueError, match=match):
            check_schedule(bad)


def _fit(prepared, tmp_path, schedule, monkeypatch=None, history_everywhere=False):
    model = build(prepared, schedule=schedule)
    if history_everywhere:  # the MF phases' batches with their histories, as before
        real = type(model).phases
        monkeypatch.setattr(type(model), "phases", lambda self: [
            __import__("dataclasses").replace(p, history=True) for p in real(self)])
    cfg = TrainConfig(epochs=1, batch_size=128, max_steps_per_epoch=6, lr=2e-3, progress=False, seed=0)
    trainer = Trainer(prepared, model, "PTUPCDR", cfg, tmp_path)
    return trainer, trainer.fit(resume=False)


def test_the_trainer_follows_the_schedule_and_leaves_histories_out(tiny_prepared, tmp_path, monkeypatch):
    seen = []
    real_epoch = IndexedSet.epoch

    def spy(self, batch_size, generator, ctx, num_workers=0, history=True):
        n, batches = real_epoch(self, batch_size, generator, ctx, num_workers, history)

        def record():
            for b in batches:
                seen.append((batch_size, history, b["seq"].shape[1]))
                yield b
        return n, record()

    monkeypatch.setattr(IndexedSet, "epoch", spy)
    schedule = {"source": {"batch_size": 64, "epochs": 2}, "target": {"batch_size": 96}}
    _, history = _fit(tiny_prepared, tmp_path / "a", schedule)
    assert [h["phase"] for h in history] == ["source", "source", "target", "meta"]
    by_size = {(bs, hist, length) for bs, hist, length in seen}
    assert by_size == {(64, False, 0), (96, False, 0), (128, True, tiny_prepared.spec.max_len)}

    # Leaving the histories out changes nothing the MF phases learn: the same weights as with them.
    monkeypatch.setattr(IndexedSet, "epoch", real_epoch)
    without, _ = _fit(tiny_prepared, tmp_path / "b", schedule)
    with_history, _ = _fit(tiny_prepared, tmp_path / "c", schedule, monkeypatch, history_everywhere=True)
    for (k, a), b in zip(without.model.state_dict().items(), with_history.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
