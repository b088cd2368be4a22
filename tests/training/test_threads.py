"""The `dacdr` commands' default thread count: the free share of the cores, an explicit count first."""

from __future__ import annotations

import pytest
import torch

from dacdr.training import threads


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_an_explicit_count_wins_in_order(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads(5) == (5, "requested")
    assert threads.choose_threads(None) == (3, "OMP_NUM_THREADS")
    assert threads.set_command_threads(1) == (1, "--threads")
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize(("cores", "busy", "local_world", "want"), [
    (8, 0, 1, 8),   # an idle box: every core
    (2, 1, 1, 1),   # a 2-core box with one other job: one thread, not an oversubscribed two
    (2, 5, 1, 1),   # never below one
    (8, 0, 2, 4),   # two local DDP processes share the cores
    (8, 6, 2, 2),   # ... and what others leave free
])
def test_the_default_takes_the_free_share(monkeypatch, cores, busy, local_world, want):
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    monkeypatch.setattr(threads, "other_runnable", lambda: busy)
    n, why = threads.choose_threads(None, local_world)
    assert n == want
    assert f"{cores} cores" in why and "train.num_threads" in why


def test_a_command_applies_the_choice(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "other_runnable", lambda: 1)
    torch.set_num_threads(2)
    assert threads.set_command_threads(None)[0] == 1
    assert torch.get_num_threads() == 1


def test_the_trainer_leaves_the_process_setting_alone_unless_asked(handmade_prepared, tmp_path):
    from dacdr.config import TrainConfig
    from dacdr.models import create_model
    from dacdr.training.trainer import Trainer

    torch.set_num_threads(1)
    cfg = TrainConfig(epochs=1, progress=False, max_steps_per_epoch=1)
    model = create_model("DNN-multi", handmade_prepared.spec, dim=8)
    Trainer(handmade_prepared, model, "DNN-multi", cfg, tmp_path / "a").fit()
    assert torch.get_num_threads() == 1
    assert "torch threads: 1 (the process setting)" in (tmp_path / "a" / "log.txt").read_text()
    Trainer(handmade_prepared, model, "DNN-multi", cfg.model_copy(update={"num_threads": 2}), tmp_path / "b").fit()
    assert torch.get_num_threads() == 2


def test_other_runnable_reads_the_kernel_count(tmp_path):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.50 1.20 0.90 4/170 12345\n")  # 4 runnable, this reader included
    assert threads.other_runnable(samples=2, interval=0.0, source=str(loadavg)) == 3
    loadavg.write_text("garbage")
    assert threads.other_runnable(source=str(loadavg)) == 0
    assert threads.other_runnable(source=str(tmp_path / "missing")) == 0
