"""Training on a GPU (`train.device`): every registered model trains, evaluates and saves on CUDA, and its
checkpoint scores the same on the CPU. Skipped where torch sees no CUDA device (CI has none)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dacdr.config import TrainConfig
from dacdr.data.batches import BatchGatherer
from dacdr.evaluation import predict
from dacdr.models import create_model, model_names
from dacdr.recipes.bench import model_params
from dacdr.training.checkpoint import load_model
from dacdr.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("name", model_names())
def test_trains_on_cuda_and_loads_on_cpu(name, tiny_prepared, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, tiny_prepared.spec, **model_params(name, tiny_prepared, 8))
    cfg = TrainConfig(epochs=1, max_steps_per_epoch=4, batch_size=256, progress=False, device="cuda")
    trainer = Trainer(tiny_prepared, model, name, cfg, tmp_path)
    assert next(trainer.model.parameters()).device.type == "cuda"
    trainer.fit()
    results = trainer.evaluate()
    assert set(results["test"]["cold"]) == set(tiny_prepared.spec.target_domains)
    cpu_model, _ = load_model(tmp_path)
    idx = tiny_prepared.split.test[:2000]
    g = BatchGatherer(tiny_prepared)
    on_gpu, on_cpu = predict(trainer.model, g, idx), predict(cpu_model, g, idx)
    assert np.isfinite(on_gpu).all()
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)
