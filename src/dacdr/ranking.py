"""Protocol P3: rank each held-out (user, item) of a cold-start user against sampled negatives.

For every test sample (user u, target domain d, positive item i), ``n_negatives`` (999) items are drawn
without replacement from d's *training* items that u never interacted with in d (train, valid or test),
with a generator fixed by ``seed``, so every model is ranked against the same candidates. The model scores
the positive and its negatives with u's source sequence and d's domain tokens; the rank of the positive
(ties counted against it, :func:`dacdr.metrics.rank_of_positive`) gives MRR, NDCG@{1,5,10} and
HR@{1,5,10} (:func:`dacdr.metrics.ranking_metrics`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dacdr.data.batches import BatchGatherer
from dacdr.data.samples import PreparedData
from dacdr.metrics import rank_of_positive, ranking_metrics
from dacdr.models import RecModel

RANKING_KS = (1, 5, 10)


def sample_candidates(
    prepared: PreparedData, indices: np.ndarray, n_negatives: int = 999, seed: int = 0
) -> np.ndarray:
    """``[len(indices), n_negatives]`` item vocabulary indices: the sampled negatives of each sample.

    The pool of domain d is the set of items of d's positive training rows (label > 0 in the training
    split); a user's own positives in d anywhere in the dataset are excluded.
    """
    s, split = prepared.samples, prepared.split
    train = split.train_target[s["label"][split.train_target] > 0]
    positives = np.flatnonzero((~s["is_source"]) & (s["label"] > 0))
    out = np.zeros((len(indices), n_negatives), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for d in np.unique(s["domain"][indices]):
        pool = np.unique(s["item"][train[s["domain"][train] == d]])
        rows = np.flatnonzero(s["domain"][indices] == d)
        mine = positives[s["domain"][positives] == d]
        by_user: dict[int, np.ndarray] = {}
        order = np.argsort(s["user"][mine], kind="stable")
        users_sorted = s["user"][mine][order]
        starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]])
        for a, b in zip(starts, np.r_[starts[1:], len(order)], strict=True):
            by_user[int(users_sorted[a])] = s["item"][mine][order[a:b]]
        for r in rows:  # one draw per test row, in index order: deterministic for a seed
            u = int(s["user"][indices[r]])
            allowed = pool[~np.isin(pool, by_user.get(u, ()))]
            if len(allowed) < n_negatives:
                raise ValueError(
                    f"domain index {d}: only {len(allowed)} training items are negatives for user {u}; "
                    f"cannot draw {n_negatives}"
                )
            out[r] = rng.choice(allowed, size=n_negatives, replace=False)
    return out


@torch.no_grad()
def score_candidates(
    model: RecModel, gatherer: BatchGatherer, indices: np.ndarray, candidates: np.ndarray, rows_per_batch: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores of each sample's own item ``[N]`` and of its candidates ``[N, M]``."""
    was_training = model.training
    model.eval()
    m = candidates.shape[1]
    pos_out, neg_out = [], []
    for start in range(0, len(indices), rows_per_batch):
        idx = indices[start : start + rows_per_batch]
        batch = gatherer.gather(idx)
        items = np.concatenate([gatherer.item[torch.as_tensor(idx)].numpy()[:, None],
                                candidates[start : start + rows_per_batch]], axis=1)  # [B, 1 + M]
        b = len(idx)
        expanded: dict[str, torch.Tensor] = {
            k: v.repeat_interleave(m + 1, dim=0) for k, v in batch.items() if k != "item"
        }
        expanded["item"] = gatherer.item_table[torch.as_tensor(items.reshape(-1))]
        scores = model.score(expanded).float().reshape(b, m + 1).numpy()
        pos_out.append(scores[:, 0])
        neg_out.append(scores[:, 1:])
    model.train(was_training)
    if not pos_out:
        return np.zeros(0), np.zeros((0, m))
    return np.concatenate(pos_out), np.concatenate(neg_out)


def ranking_report(
    model: RecModel,
    prepared: PreparedData,
    indices: np.ndarray | None = None,
    n_negatives: int = 999,
    seed: int = 0,
    candidates: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """P3 metrics per target domain for the samples ``indices`` (default: the test split's positives)."""
    s = prepared.samples
    if indices is None:
        indices = prepared.split.test[s["label"][prepared.split.test] > 0]
    if candidates is None:
        candidates = sample_candidates(prepared, indices, n_negatives, seed)
    pos, neg = score_candidates(model, BatchGatherer(prepared), indices, candidates)
    ranks = rank_of_positive(pos, neg)
    out: dict[str, dict[str, Any]] = {}
    for name in prepared.spec.target_domains:
        sel = s["domain"][indices] == prepared.vocabs["domain"].lookup(name)
        if sel.any():
            out[name] = ranking_metrics(ranks[sel], RANKING_KS)
    return out
