"""Cold-start evaluation protocols: which samples train, validate and test.

Both protocols take the validation split from *training* users (their target rows are removed from
training, so validation mimics cold start) and never look at the test set for model selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Split:
    """Sample indices of each part, and which test samples belong to cold-start users."""

    train_target: np.ndarray
    train_source: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    test_cold: np.ndarray
    """bool per entry of `test`: the user had no row in that target domain before the test period"""

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {f"split_{k}": v for k, v in self.__dict__.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Split:
        return cls(**{k.removeprefix("split_"): v for k, v in arrays.items() if k.startswith("split_")})


def _hash_unit(keys: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic pseudo-uniform [0, 1) draw per key (splitmix64), independent of row order."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _pair_key(user: np.ndarray, domain: np.ndarray) -> np.ndarray:
    return user.astype(np.int64) * 1024 + domain.astype(np.int64)


def _subsample(idx: np.ndarray, rate: float, seed: int, row_ids: np.ndarray | None = None) -> np.ndarray:
    """A `rate` share of `idx`, drawn per row (by its global number `row_ids[idx]`, default `idx` itself)."""
    if rate >= 1.0:
        return idx
    return idx[_hash_unit(idx if row_ids is None else row_ids[idx], seed + 7) < rate]


def time_split(
    user: np.ndarray,
    domain: np.ndarray,
    timestamp: np.ndarray,
    is_source: np.ndarray,
    test_start: int,
    valid_share: float,
    source_sample_rate: float = 1.0,
    seed: int = 0,
    row_ids: np.ndarray | None = None,
) -> Split:
    """P1: the test period starts at `test_start`; training is everything before it.

    A test sample is cold-start when its user has no row in that target domain before `test_start`.
    Validation: per target, a `valid_share` of the users with training rows there.
    """
    before = timestamp < test_start
    target = ~is_source
    pair = _pair_key(user, domain)
    warm_pairs = np.unique(pair[target & before])
    test = np.flatnonzero(target & ~before)
    test_cold = ~np.isin(pair[test], warm_pairs)
    train_target = np.flatnonzero(target & before)
    in_valid = _hash_unit(pair[train_target], seed) < valid_share
    valid = train_target[in_valid]
    train_target = train_target[~in_valid]
    train_source = _subsample(np.flatnonzero(is_source & before), source_sample_rate, seed, row_ids)
    return Split(train_target, train_source, valid, test, test_cold)


def user_split(
    user: np.ndarray,
    domain: np.ndarray,
    is_source: np.ndarray,
    cold_start_share: float,
    valid_share: float,
    source_sample_rate: float = 1.0,
    seed: int = 0,
) -> Split:
    """P2 (PTUPCDR protocol): per target, exactly round(share x n) of its n overlapping users (users with
    rows in the source and in that target) are drawn at random as cold-start test users, as the PTUPCDR
    code does with `random.sample`; all their target rows are hidden from training. The draw depends only
    on (seed, target, the set of overlapping users), not on row order."""
    target = ~is_source
    source_users = np.unique(user[is_source])
    pair = _pair_key(user, domain)
    overlap = target & np.isin(user, source_users)
    test_pairs: list[np.ndarray] = []
    for d in np.unique(domain[target]):
        users_d = np.unique(user[overlap & (domain == d)])
        n_test = round(cold_start_share * len(users_d))  # Python's round, as in the PTUPCDR code
        rng = np.random.default_rng([seed, int(d)])
        chosen = users_d[rng.permutation(len(users_d))[:n_test]]
        test_pairs.append(_pair_key(chosen, np.full(len(chosen), d)))
    is_test = overlap & np.isin(pair, np.concatenate(test_pairs) if test_pairs else np.zeros(0, np.int64))
    test = np.flatnonzero(is_test)
    rest = np.flatnonzero(target & ~is_test)
    in_valid = _hash_unit(pair[rest], seed + 1) < valid_share
    train_source = _subsample(np.flatnonzero(is_source), source_sample_rate, seed)
    return Split(rest[~in_valid], train_source, rest[in_valid], test, np.ones(len(test), dtype=bool))


def period_split(
    timestamp: np.ndarray,
    is_source: np.ndarray,
    valid_start: int,
    test_start: int,
    source_sample_rate: float = 1.0,
    seed: int = 0,
) -> Split:
    """A published split written as clock periods (CDRIB): target rows before `valid_start` train, rows in
    [`valid_start`, `test_start`) validate, rows from `test_start` on are the (cold-start) test set."""
    target = ~is_source
    train_target = np.flatnonzero(target & (timestamp < valid_start))
    valid = np.flatnonzero(target & (timestamp >= valid_start) & (timestamp < test_start))
    test = np.flatnonzero(target & (timestamp >= test_start))
    train_source = _subsample(np.flatnonzero(is_source), source_sample_rate, seed)
    return Split(train_target, train_source, valid, test, np.ones(len(test), dtype=bool))
