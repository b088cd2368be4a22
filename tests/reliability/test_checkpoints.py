"""Checkpoints are written as one unit: a kill at any step of the write resumes to the uninterrupted weights.

The fault is injected with `$DACDR_FAULT` (`dacdr.fsutil.fault_point`): a forked child trains until the named
step of its N-th checkpoint write and SIGKILLs itself there (no `finally`, no cleanup, as with `kill -9`); the
parent then resumes the run in the same directory and compares every tensor with an uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
import torch

from dacdr.config import TrainConfig
from dacdr.fsutil import FAULT_ENV
from dacdr.models import create_model
from dacdr.training.checkpoint import CheckpointError
from dacdr.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fault injection forks a child")

EPOCHS = 3


def _trainer(prepared, run_dir):
    cfg = TrainConfig(epochs=EPOCHS, batch_size=256, patience=10, progress=False, seed=0, max_steps_per_epoch=6)
    torch.manual_seed(cfg.seed)
    model = create_model("DACDR", prepared.spec, dim=8, heads=2, user_dim=16, encoder_hidden=[16],
                         predictor_hidden=[16])
    return Trainer(prepared, model, "DACDR", cfg, run_dir)


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # float reductions depend on the thread count; the child inherits this one
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(handmade_prepared, tmp_path_factory, one_thread):
    trainer = _trainer(handmade_prepared, tmp_path_factory.mktemp("ref") / "run")
    history = trainer.fit()
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}, history


def _killed_run(prepared, run_dir, fault: str) -> None:
    """Train in a forked child that SIGKILLs itself at `fault`; asserts that it died there."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.environ[FAULT_ENV] = fault
            _trainer(prepared, run_dir).fit()
        finally:
            os._exit(3)  # reached only if the fault point was never hit
    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"child hung at {fault}")
        time.sleep(0.05)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{fault} was never reached"


# every step of a checkpoint write, at the first write (no previous checkpoint) and at the second
FAULTS = [f"checkpoint.{step}@{n}" for n in (1, 2) for step in ("weights", "optimizer", "state", "aside", "swapped")
          if not (n == 1 and step == "aside")]  # the first write has nothing to move aside


@pytest.mark.parametrize("fault", FAULTS)
def test_kill_at_each_step_of_a_checkpoint_write_resumes_exactly(fault, handmade_prepared, reference, tmp_path):
    run_dir = tmp_path / "run"
    _killed_run(handmade_prepared, run_dir, fault)
    resumed = _trainer(handmade_prepared, run_dir)
    history = resumed.fit()
    want_weights, want_history = reference
    assert [h["epoch"] for h in history] == [h["epoch"] for h in want_history] == list(range(1, EPOCHS + 1))
    assert [h["loss"] for h in history] == [h["loss"] for h in want_history], "an epoch was trained twice"
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, want_weights[k]), f"{fault}: {k} differs from the uninterrupted run"
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".resume")]
    assert leftovers == [], f"temporary or aside folders left behind: {leftovers}"


def test_torn_checkpoint_is_detected_and_named(handmade_prepared, tmp_path, one_thread):
    """Epoch-2 weights beside epoch-1 optimizer and state: what the former writer (weights first, state last)
    left after a kill between its files, and resumed from silently, training epoch 2 twice."""
    for n in (2, 3):  # killed during the n-th write: resume/ holds the checkpoint of epoch n-1
        _killed_run(handmade_prepared, tmp_path / f"e{n - 1}", f"checkpoint.state@{n}")
    torn = tmp_path / "e1" / "resume"
    shutil.copy(tmp_path / "e2" / "resume" / "model.safetensors", torn / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"torn checkpoint: model.safetensors is not .*epoch 1\)"):
        _trainer(handmade_prepared, tmp_path / "e1").fit()
    (torn / "state.json").unlink()
    with pytest.raises(CheckpointError, match=r"torn checkpoint: .*without state.json"):
        _trainer(handmade_prepared, tmp_path / "e1").fit()
