"""Metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

from dacdr.metrics import (
    auc,
    ctr_metrics,
    gauc,
    logloss,
    mae,
    rank_of_positive,
    ranking_metrics,
    rating_metrics,
    rmse,
)

SEEDS = range(6)


def random_ctr(seed: int, n: int, *, n_users: int = 30, tie_levels: int | None = None):
    """Labels correlated with scores; ``tie_levels`` rounds scores to force many ties."""
    rng = np.random.default_rng(seed)
    scores = rng.random(n)
    if tie_levels is not None:
        scores = np.round(scores * tie_levels) / tie_levels
    labels = (rng.random(n) < 0.3 + 0.4 * scores).astype(np.int64)
    users = rng.integers(0, n_users, n)
    return users, labels, scores


def reference_gauc(users, labels, scores) -> float:
    """The definition, one user at a time."""
    total, weight = 0.0, 0
    for user in np.unique(users):
        mask = users == user
        if labels[mask].min() == labels[mask].max():
            continue
        total += roc_auc_score(labels[mask], scores[mask]) * mask.sum()
        weight += mask.sum()
    return total / weight if weight else float("nan")


# --- AUC -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("n", "tie_levels"), [(2000, None), (2000, 5), (500, 1), (7, None), (7, 2)])
def test_auc_matches_sklearn(seed: int, n: int, tie_levels: int | None) -> None:
    _, labels, scores = random_ctr(seed, n, tie_levels=tie_levels)
    if labels.min() == labels.max():
        labels[0] = 1 - labels[0]
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12, abs=1e-12)


def test_auc_small_cases() -> None:
    assert auc([0, 1], [0.1, 0.9]) == 1.0
    assert auc([0, 1], [0.9, 0.1]) == 0.0
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert auc([1, 0, 1, 0], [0.3, 0.3, 0.8, 0.1]) == pytest.approx(roc_auc_score([1, 0, 1, 0], [0.3, 0.3, 0.8, 0.1]))
    assert auc(np.array([True, False]), [2.0, 1.0]) == 1.0


@pytest.mark.parametrize(("labels", "scores"), [([1, 1, 1], [0.1, 0.2, 0.3]), ([0], [0.4]), ([], [])])
def test_auc_is_nan_with_one_class(labels, scores) -> None:
    assert math.isnan(auc(labels, scores))


def test_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="length mismatch"):
        auc([0, 1, 1], [0.1, 0.2])


def test_auc_is_exact_on_large_input() -> None:
    _, labels, scores = random_ctr(0, 2_000_000, tie_levels=1000)
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)


# --- gAUC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("n", "n_users", "tie_levels"), [(3000, 40, None), (3000, 40, 4), (200, 60, 2), (12, 3, None), (12, 4, 1)]
)
def test_gauc_matches_reference_loop(seed: int, n: int, n_users: int, tie_levels: int | None) -> None:
    users, labels, scores = random_ctr(seed, n, n_users=n_users, tie_levels=tie_levels)
    expected = reference_gauc(users, labels, scores)
    got = gauc(users, labels, scores)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, rel=1e-12)


def test_gauc_hand_computed_weighting() -> None:
    # user a: 3 impressions, AUC 1; user b: 2 impressions, AUC 0; user c: one class only, ignored
    users = ["a", "a", "a", "b", "b", "c", "c"]
    labels = [1, 0, 0, 0, 1, 1, 1]
    scores = [0.9, 0.1, 0.2, 0.9, 0.1, 0.3, 0.4]
    assert gauc(users, labels, scores) == pytest.approx(3 / 5)


def test_gauc_with_string_users_equals_int_users() -> None:
    users, labels, scores = random_ctr(3, 500, n_users=25, tie_levels=3)
    assert gauc(users.astype(str), labels, scores) == pytest.approx(gauc(users, labels, scores), rel=1e-12)


def test_gauc_is_nan_when_no_user_has_both_classes() -> None:
    assert math.isnan(gauc([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(gauc([], [], []))


# --- pointwise -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_logloss_matches_sklearn_with_clipping(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 1000)
    probs = rng.random(1000)
    probs[:10] = [0.0, 1.0, 1e-12, 1 - 1e-12, 0.5, 0.0, 1.0, 0.3, 0.7, 1e-3]
    eps = 1e-7
    expected = log_loss(labels, np.clip(probs, eps, 1 - eps), labels=[0, 1])
    assert logloss(labels, probs, eps=eps) == pytest.approx(expected, rel=1e-10)


def test_logloss_of_confident_miss_is_finite() -> None:
    assert logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))


@pytest.mark.parametrize("seed", SEEDS)
def test_mae_rmse_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 6, 777).astype(float)
    preds = labels + rng.normal(0, 1, 777)
    assert mae(labels, preds) == pytest.approx(mean_absolute_error(labels, preds), rel=1e-12)
    assert rmse(labels, preds) == pytest.approx(math.sqrt(mean_squared_error(labels, preds)), rel=1e-12)


def test_column_vectors_are_accepted() -> None:
    assert mae(np.ones((3, 1)), np.zeros((3, 1))) == 1.0
    with pytest.raises(ValueError, match="one-dimensional"):
        mae(np.ones((3, 2)), np.zeros((3, 2)))


# --- ranking -------------------------------------------------------------------------------------


def test_rank_of_positive_hand_computed() -> None:
    pos = [0.9, 0.5, 0.1, 0.5]
    neg = [
        [0.1, 0.2, 0.3],  # beats all: rank 1
        [0.6, 0.4, 0.7],  # two above: rank 3
        [0.2, 0.3, 0.4],  # all above: rank 4
        [0.5, 0.1, 0.2],  # one tie: pessimistic, rank 2
    ]
    assert rank_of_positive(pos, neg).tolist() == [1, 3, 4, 2]


def test_constant_scores_get_the_worst_rank() -> None:
    assert rank_of_positive(np.zeros(3), np.zeros((3, 99))).tolist() == [100, 100, 100]


def test_rank_of_positive_checks_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        rank_of_positive([0.1, 0.2], [[0.3, 0.4]])


def test_ranking_metrics_hand_computed() -> None:
    ranks = [1, 3, 4, 2, 11]
    out = ranking_metrics(ranks, ks=(1, 5, 10))
    assert out["n"] == 5
    assert out["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 4 + 1 / 2 + 1 / 11) / 5)
    assert out["hr@1"] == pytest.approx(1 / 5)
    assert out["hr@5"] == pytest.approx(4 / 5)
    assert out["hr@10"] == pytest.approx(4 / 5)
    ndcg5 = (1 + 1 / math.log2(4) + 1 / math.log2(5) + 1 / math.log2(3)) / 5
    assert out["ndcg@5"] == pytest.approx(ndcg5)
    assert out["ndcg@10"] == pytest.approx(ndcg5)  # rank 11 is outside the cutoff
    assert out["ndcg@1"] == pytest.approx(out["hr@1"])
    assert set(out) == {"mrr", "ndcg@1", "ndcg@5", "ndcg@10", "hr@1", "hr@5", "hr@10", "n"}


def test_ranking_metrics_from_scores_end_to_end() -> None:
    rng = np.random.default_rng(0)
    pos = rng.random(200)
    neg = rng.random((200, 99))
    ranks = rank_of_positive(pos, neg)
    expected = np.array([1 + sum(n >= p for n in row) for p, row in zip(pos, neg, strict=True)])
    np.testing.assert_array_equal(ranks, expected)
    assert ranking_metrics(ranks)["hr@10"] == pytest.approx(np.mean(expected <= 10))


def test_ranking_metrics_rejects_zero_rank() -> None:
    with pytest.raises(ValueError, match="1-based"):
        ranking_metrics([0, 1])


# --- bundles -------------------------------------------------------------------------------------


def test_ctr_and_rating_bundles() -> None:
    users, labels, scores = random_ctr(1, 400, n_users=10)
    out = ctr_metrics(labels, scores, users)
    assert out == {
        "auc": auc(labels, scores),
        "gauc": gauc(users, labels, scores),
        "logloss": logloss(labels, scores),
        "n": 400,
    }
    assert rating_metrics([1.0, 5.0], [2.0, 3.0]) == {"mae": 1.5, "rmse": math.sqrt(2.5), "n": 2}
