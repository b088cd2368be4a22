"""The default torch thread count: the free share of the cores, never more than asked, logged."""

from __future__ import annotations

import pytest

from dacdr.training import threads


@pytest.fixture(autouse=True)
def _no_explicit(monkeypatch):
    monkeypatch.setattr(threads, "_chosen", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_an_explicit_count_wins_in_order(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads(5) == (5, "train.num_threads")
    assert threads.choose_threads(None) == (3, "OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "_chosen", 2)
    assert threads.choose_threads(None) == (2, "--threads")


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


def test_other_runnable_reads_the_kernel_count(tmp_path):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.50 1.20 0.90 4/170 12345\n")  # 4 runnable, this reader included
    assert threads.other_runnable(samples=2, interval=0.0, source=str(loadavg)) == 3
    loadavg.write_text("garbage")
    assert threads.other_runnable(source=str(loadavg)) == 0
    assert threads.other_runnable(source=str(tmp_path / "missing")) == 0
