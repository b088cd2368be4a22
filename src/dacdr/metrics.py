"""Evaluation metrics (MODEL.md, protocols P1-P3), vectorised numpy.

Everything here runs in O(n log n) numpy over millions of predictions; no Python loop touches a row
or a user. Inputs are anything ``np.asarray`` accepts (numpy, lists, polars Series, CPU tensors).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "auc",
    "ctr_metrics",
    "gauc",
    "logloss",
    "mae",
    "rank_of_positive",
    "ranking_metrics",
    "rating_metrics",
    "rmse",
]


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _vector(x: ArrayLike, name: str, dtype: type | None = np.float64) -> np.ndarray:
    """``x`` as a 1-D array; a ``[N, 1]`` column (a model's output) is accepted and flattened."""
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr if dtype is None else arr.astype(dtype, copy=False)


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"length mismatch: {lengths}")
    return next(iter(lengths.values()))


def _binary_labels(labels: ArrayLike) -> np.ndarray:
    y = _vector(labels, "labels")
    if not np.all((y == 0) | (y == 1)):
        bad = y[(y != 0) & (y != 1)][:3]
        raise ValueError(f"labels must be 0 or 1, found e.g. {bad.tolist()}")
    return y.astype(np.int64)


def _finite_scores(scores: ArrayLike, name: str = "scores") -> np.ndarray:
    s = _vector(scores, name)
    if np.isnan(s).any():
        raise ValueError(f"{name} contain NaN")
    return s


# --------------------------------------------------------------------------------------------------
# AUC and gAUC
# --------------------------------------------------------------------------------------------------


def _tie_group_counts(
    sorted_scores: np.ndarray, sorted_labels: np.ndarray, group_start: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rows sorted by (segment, score): start index, positives and negatives of each tie group.

    ``group_start`` marks rows that begin a new segment (e.g. a new user); a tie group is a run of equal
    scores inside one segment.
    """
    new_group = group_start.copy()
    new_group[1:] |= sorted_scores[1:] != sorted_scores[:-1]
    starts = np.flatnonzero(new_group)
    pos = np.add.reduceat(sorted_labels, starts)
    size = np.diff(np.append(starts, len(sorted_labels)))
    return starts, pos, size - pos


def _pairs_won(pos: np.ndarray, neg: np.ndarray, segment_first_group: np.ndarray) -> np.ndarray:
    """Twice the Mann-Whitney U of each segment, in exact integers.

    A positive beats every negative of a lower score in its segment (2 points) and ties with the
    negatives of its own tie group (1 point): 2U = sum_g pos_g * (2 * neg_below_g + neg_g). Integer
    arithmetic keeps AUC exact where float rank sums (order n^2) would lose digits for large n.
    """
    neg_below = np.cumsum(neg) - neg  # negatives in all earlier groups
    segment_start = np.flatnonzero(segment_first_group)
    # subtract the negatives of earlier segments: the running count restarts at each segment
    segment_id = np.cumsum(segment_first_group) - 1
    neg_below -= neg_below[segment_start][segment_id]
    return np.add.reduceat(pos * (2 * neg_below + neg), segment_start)


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC (Mann-Whitney, tied scores count half), equal to ``sklearn.metrics.roc_auc_score``.

    NaN when only one class is present.
    """
    y = _binary_labels(labels)
    s = _finite_scores(scores)
    n = _same_length(labels=y, scores=s)
    n_pos = int(y.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    first = np.zeros(n, dtype=bool)
    first[0] = True
    _, pos, neg = _tie_group_counts(s[order], y[order], first)
    first_group = np.zeros(len(pos), dtype=bool)
    first_group[0] = True
    twice_u = int(_pairs_won(pos, neg, first_group)[0])
    return twice_u / (2.0 * n_pos * n_neg)


def gauc(users: ArrayLike, labels: ArrayLike, scores: ArrayLike) -> float:
    """Group AUC: mean of per-user AUC weighted by the user's impressions (rows).

    Only users with both a positive and a negative count, in the AUC and in the weights. NaN when
    no user qualifies.
    """
    u = _vector(users, "users", dtype=None)
    y = _binary_labels(labels)
    s = _finite_scores(scores)
    n = _same_length(users=u, labels=y, scores=s)
    if n == 0:
        return float("nan")
    _, user_code = np.unique(u, return_inverse=True)
    user_code = user_code.reshape(-1)
    order = np.lexsort((s, user_code))  # by user, then score
    code, s, y = user_code[order], s[order], y[order]
    user_first = np.ones(n, dtype=bool)
    user_first[1:] = code[1:] != code[:-1]
    starts, pos, neg = _tie_group_counts(s, y, user_first)
    first_group = user_first[starts]
    twice_u = _pairs_won(pos, neg, first_group)
    user_start = starts[first_group]
    n_pos = np.add.reduceat(pos, np.flatnonzero(first_group))
    n_rows = np.diff(np.append(user_start, n))
    n_neg = n_rows - n_pos
    both = (n_pos > 0) & (n_neg > 0)
    if not both.any():
        return float("nan")
    user_auc = twice_u[both] / (2.0 * n_pos[both] * n_neg[both])
    weight = n_rows[both].astype(np.float64)
    return float(np.sum(user_auc * weight) / np.sum(weight))


# --------------------------------------------------------------------------------------------------
# Pointwise losses
# --------------------------------------------------------------------------------------------------


def logloss(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, probabilities clipped to ``[eps, 1 - eps]`` so a confident miss
    costs a finite amount. NaN on empty input."""
    y = _binary_labels(labels)
    p = _finite_scores(probs, "probs")
    if _same_length(labels=y, probs=p) == 0:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))))


def mae(labels: ArrayLike, preds: ArrayLike) -> float:
    """Mean absolute error; NaN on empty input."""
    y, p = _vector(labels, "labels"), _vector(preds, "preds")
    if _same_length(labels=y, preds=p) == 0:
        return float("nan")
    return float(np.mean(np.abs(p - y)))


def rmse(labels: ArrayLike, preds: ArrayLike) -> float:
    """Root mean squared error; NaN on empty input."""
    y, p = _vector(labels, "labels"), _vector(preds, "preds")
    if _same_length(labels=y, preds=p) == 0:
        return float("nan")
    return float(np.sqrt(np.mean(np.square(p - y))))


# --------------------------------------------------------------------------------------------------
# Ranking (protocol P3)
# --------------------------------------------------------------------------------------------------


def rank_of_positive(pos_scores: ArrayLike, neg_scores: ArrayLike) -> np.ndarray:
    """1-based rank of each positive among itself and its sampled negatives.

    ``pos_scores`` is ``[N]``, ``neg_scores`` is ``[N, M]``. Ties are counted pessimistically: a
    negative scoring equal to the positive ranks above it, so rank = 1 + #(neg >= pos). This way a
    model that outputs a constant gets the worst rank (M + 1), never a free hit. Returns int64 ``[N]``.
    """
    pos = _finite_scores(pos_scores, "pos_scores")
    neg = np.asarray(neg_scores, dtype=np.float64)
    if neg.ndim != 2 or neg.shape[0] != len(pos):
        raise ValueError(f"neg_scores must have shape [N={len(pos)}, M], got {neg.shape}")
    if np.isnan(neg).any():
        raise ValueError("neg_scores contain NaN")
    return 1 + np.count_nonzero(neg >= pos[:, None], axis=1).astype(np.int64)


def ranking_metrics(ranks: ArrayLike, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """MRR, NDCG@k and HR@k of 1-based ranks of one relevant item per query, plus ``n``.

    With a single relevant item, NDCG@k = 1 / log2(rank + 1) if rank <= k else 0 (the ideal DCG is 1).
    Keys: ``mrr``, ``ndcg@k`` and ``hr@k`` for each k, ``n``. Metrics are NaN on empty input.
    """
    r = _vector(ranks, "ranks")
    if (r < 1).any():
        raise ValueError("ranks are 1-based and must be >= 1")
    n = len(r)
    out: dict[str, float] = {}
    nan = float("nan")
    out["mrr"] = float(np.mean(1.0 / r)) if n else nan
    gain = 1.0 / np.log2(r + 1.0)
    for k in ks:
        hit = r <= k
        out[f"ndcg@{k}"] = float(np.mean(np.where(hit, gain, 0.0))) if n else nan
    for k in ks:
        out[f"hr@{k}"] = float(np.mean(r <= k)) if n else nan
    out["n"] = n
    return out


# --------------------------------------------------------------------------------------------------
# Task bundles
# --------------------------------------------------------------------------------------------------


def ctr_metrics(labels: ArrayLike, probs: ArrayLike, users: ArrayLike) -> dict[str, float]:
    """Protocol P1 metrics: ``auc``, ``gauc``, ``logloss`` and the sample count ``n``."""
    y = _binary_labels(labels)
    p = _finite_scores(probs, "probs")
    u = _vector(users, "users", dtype=None)
    n = _same_length(labels=y, probs=p, users=u)
    return {"auc": auc(y, p), "gauc": gauc(u, y, p), "logloss": logloss(y, p), "n": n}


def rating_metrics(labels: ArrayLike, preds: ArrayLike) -> dict[str, float]:
    """Protocol P2 metrics: ``mae``, ``rmse`` and the sample count ``n``."""
    y, p = _vector(labels, "labels"), _vector(preds, "preds")
    n = _same_length(labels=y, preds=p)
    return {"mae": mae(y, p), "rmse": rmse(y, p), "n": n}
