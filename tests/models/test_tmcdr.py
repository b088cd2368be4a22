"""TMCDR's meta stage: task split, the inner (support) step and the outer (query) update."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dacdr.data.batches import BatchGatherer
from dacdr.models import create_model
from dacdr.models.emcdr import overlapping_rows


def build(prepared, **params):
    torch.manual_seed(0)
    return create_model("TMCDR", prepared.spec, n_users=len(prepared.vocabs["user"]), dim=8, **params)


@pytest.fixture(scope="module")
def meta_batch(handmade_prepared):
    """Target rows of overlapping users: what the meta phase trains on."""
    rows = overlapping_rows(handmade_prepared, handmade_prepared.split.train_target)
    return BatchGatherer(handmade_prepared).gather(rows[:300])


def meta_phase(model):
    """The model as the trainer leaves it in the meta phase: only the meta networks are trainable."""
    phase = model.phases()[-1]
    assert phase.name == "meta"
    model.set_phase(phase.name)
    for n, p in model.named_parameters():
        p.requires_grad_(phase.trainable(n))
    return model.train()


def test_tasks_split_users_into_disjoint_support_and_query(handmade_prepared, meta_batch):
    model = build(handmade_prepared, tasks_per_batch=3)
    torch.manual_seed(1)
    tasks = model.split_tasks(meta_batch["user"])
    assert len(tasks) == 3
    rows = torch.cat([torch.cat(t) for t in tasks])
    assert sorted(rows.tolist()) == list(range(len(meta_batch["user"])))  # every row in exactly one part
    user = meta_batch["user"]
    seen: set[int] = set()
    for support, query in tasks:
        s_users, q_users = set(user[support].tolist()), set(user[query].tolist())
        assert s_users and q_users and not s_users & q_users
        assert not (s_users | q_users) & seen  # tasks are disjoint user groups
        seen |= s_users | q_users


def test_inner_step_changes_the_fast_weights_not_the_parameters(handmade_prepared, meta_batch):
    model = meta_phase(build(handmade_prepared))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    support, _ = model.split_tasks(meta_batch["user"])[0]
    fast = model.adapt(meta_batch, support)
    assert set(fast) == {n for n in before if n.startswith("meta_bridges.")}
    assert any(not torch.equal(fast[n], before[n]) for n in fast)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    # the fast weights are the one SGD step of the paper's inner loop: theta - alpha * grad(support loss)
    theta = model.meta_parameters()
    grads = torch.autograd.grad(model.rows_loss(meta_batch, support), list(theta.values()))
    for (n, p), g in zip(theta.items(), grads, strict=True):
        torch.testing.assert_close(fast[n], p - model.inner_lr * g)


def test_query_loss_is_scored_with_the_adapted_weights(handmade_prepared, meta_batch):
    """With one task, the meta loss equals the query loss of a copy whose meta networks took the inner step."""
    model = meta_phase(build(handmade_prepared, tasks_per_batch=1, inner_lr=0.5))
    torch.manual_seed(2)
    ((support, query),) = model.split_tasks(meta_batch["user"])
    torch.manual_seed(2)
    meta_loss = model.meta_loss(model, meta_batch)
    stepped = copy.deepcopy(model)
    grads = torch.autograd.grad(model.rows_loss(meta_batch, support), list(model.meta_parameters().values()))
    with torch.no_grad():
        for p, g in zip(stepped.meta_parameters().values(), grads, strict=True):
            p -= model.inner_lr * g
    torch.testing.assert_close(meta_loss, stepped.rows_loss(meta_batch, query))
    # and it is not the loss of the unadapted network: the inner step matters
    assert not torch.allclose(meta_loss, model.rows_loss(meta_batch, query))


def test_outer_step_updates_only_the_meta_networks(handmade_prepared, meta_batch):
    model = meta_phase(build(handmade_prepared))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model.meta_loss(model, meta_batch)
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("meta_bridges.") for n in changed)
    # every target's meta network is reached by the outer step (the batch spans both targets)
    assert {n.split(".")[1] for n in changed} == {str(t) for t in range(model.n_targets)}


def test_second_order_gradient_differs_from_first_order(handmade_prepared, meta_batch):
    """MAML differentiates through the inner step; the first-order variant drops that term."""
    grads = {}
    for first_order in (False, True):
        model = meta_phase(build(handmade_prepared, first_order=first_order, inner_lr=0.5))
        torch.manual_seed(3)
        model.meta_loss(model, meta_batch).backward()
        grads[first_order] = torch.cat([p.grad.flatten() for p in model.meta_parameters().values()])
    assert torch.isfinite(grads[False]).all()
    assert not torch.allclose(grads[False], grads[True])


def test_bad_meta_settings_are_refused(handmade_prepared):
    with pytest.raises(ValueError, match="tasks_per_batch"):
        build(handmade_prepared, tasks_per_batch=0)
    with pytest.raises(ValueError, match="inner_lr"):
        build(handmade_prepared, inner_lr=-1.0)


def test_inference_maps_the_source_embedding(handmade_prepared, meta_batch):
    """Deployed scores use f_theta(u_s): changing a user's target embedding changes nothing."""
    model = build(handmade_prepared).eval()
    before = model.score(meta_batch)
    with torch.no_grad():
        model.target_user.weight.normal_()
    torch.testing.assert_close(model.score(meta_batch), before)
    with torch.no_grad():
        model.source_user.weight.normal_()
    assert not torch.allclose(model.score(meta_batch), before)
    assert np.isfinite(before.detach().numpy()).all()


def test_rating_task_trains_with_the_squared_error(tmp_path):
    """On a rating dataset (one target) the meta loss is the MSE of the deployed forward, and the staged
    run goes through the trainer end to end."""
    from dacdr.config import TrainConfig
    from dacdr.data.dataset import load_dataset
    from dacdr.data.samples import prepare
    from dacdr.training.trainer import Trainer
    from tests.test_ptupcdr_export import write_amazon_pair

    prepared = prepare(load_dataset(write_amazon_pair(tmp_path / "raw")), protocol="users",
                       cold_start_share=0.5, seed=900, max_len=8)
    assert prepared.spec.task == "rating" and len(prepared.spec.target_domains) == 1
    model = meta_phase(build(prepared, tasks_per_batch=1, inner_lr=0.0))
    rows = overlapping_rows(prepared, prepared.split.train_target)
    batch = BatchGatherer(prepared).gather(rows)
    torch.manual_seed(0)
    ((_, query),) = model.split_tasks(batch["user"])
    torch.manual_seed(0)
    torch.testing.assert_close(model.meta_loss(model, batch),
                               torch.nn.functional.mse_loss(model.score(batch)[query], batch["label"][query]))
    cfg = TrainConfig(epochs=2, batch_size=32, max_steps_per_epoch=3, progress=False, num_threads=1)
    history = Trainer(prepared, build(prepared), "TMCDR", cfg, tmp_path / "run").fit()
    meta = [h["loss"] for h in history if h["phase"] == "meta"]
    assert meta and np.isfinite(meta).all()
