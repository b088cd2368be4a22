"""Top-k recommendation from a domain's item pool: a low-rank retrieval stage, then exact re-ranking.

Scoring a whole pool costs one model row per item (a 20,000-item pool: ~150 ms). Instead, per domain pool,
when the scorer loads:

1. the pool is scored for a sample of store users (and the empty history) with the served engine; the
   centred logit matrix is factorised by truncated SVD, `S ≈ b + A Vᵀ` (rank r): every item gets a vector
   `V_i` and an offset `b_i`;
2. `P` probe items are chosen by QR with column pivoting on `Vᵀ` (the best-conditioned subset) plus the
   items whose scores vary most across users, and `G = pinv(V_P)` is kept.

Per request the probes are scored exactly, the user's vector is `a = G (s_P - b_P)`, the proxy `b + V a`
ranks the whole pool (one [N, r] product), and the best `M` by proxy are scored exactly; the top k of the
exact scores (probes included) are returned. Works for every model (the engine is a black box); for a pool
of at most `P + M` items the whole pool is scored exactly. Recall@k against full scoring is measured by
`benchmarks/recommend.py` (docs/serving.md).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg

from dacdr.data.features import FIRST_ID, OOV
from dacdr.serving.scoring import RequestError, Resolved, ScoreQuery, Scorer

CHUNK = 8192
"""most items per engine call (bounds the memory of one call on big pools)"""


@dataclass(frozen=True)
class RetrievalConfig:
    rank: int = 32
    probes: int = 96
    rerank: int = 400
    fit_users: int = 128
    seed: int = 0


@dataclass
class PoolIndex:
    """One domain's pool and, for pools larger than probes + rerank, its low-rank retrieval factors."""

    domain: str
    domain_row: int
    items: np.ndarray  # [N] item vocabulary indices
    offset: np.ndarray | None = None  # [N] b
    factors: np.ndarray | None = None  # [N, r] V
    probes: np.ndarray | None = None  # [P] positions in `items`
    probe_map: np.ndarray | None = None  # [r, P] pinv(V_P)
    fit_seconds: float = 0.0

    @property
    def retrieval(self) -> bool:
        return self.factors is not None


def _logits(scorer: Scorer, preds: np.ndarray) -> np.ndarray:
    """Predictions on a scale where the low-rank model is fitted: logits (CTR), ratings as they are."""
    if scorer.spec.task != "ctr":
        return preds.astype(np.float64)
    p = np.clip(preds.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def score_items(scorer: Scorer, r: Resolved, domain_row: int, user_id: str | int, items: np.ndarray) -> np.ndarray:
    """Exact predictions of one user for `items` (vocabulary indices), in engine calls of at most CHUNK."""
    if len(items) == 0:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([scorer.predict([r], [domain_row], [items[i:i + CHUNK]], [user_id])
                           for i in range(0, len(items), CHUNK)])


def _fit_users(scorer: Scorer, cfg: RetrievalConfig) -> list[tuple[str, Resolved]]:
    users = list(scorer.user_vocab.values) if scorer.user_vocab else []
    random.Random(cfg.seed).shuffle(users)
    out: list[tuple[str, Resolved]] = [("", Resolved(np.zeros((0, scorer.n_fields), dtype=np.int64), "none", True))]
    for u in users:
        if len(out) > cfg.fit_users:
            break
        stored = scorer.pkg.store.history(u)
        if stored is not None:
            out.append((u, Resolved(stored[-scorer.max_len:], "store", False)))
    return out


def build_index(scorer: Scorer, domain: str, cfg: RetrievalConfig) -> PoolIndex:
    """The pool of `domain`, with retrieval factors fitted on store users when the pool is large."""
    t0 = time.perf_counter()
    dom = scorer.domains[domain]
    items = np.asarray(scorer.pkg.item_pools.get(domain, np.zeros(0, np.int64)), dtype=np.int64)
    index = PoolIndex(domain, dom["index"], items)
    if len(items) <= cfg.probes + cfg.rerank:
        return index
    users = _fit_users(scorer, cfg)
    logits = np.stack([_logits(scorer, score_items(scorer, r, dom["index"], u, items)) for u, r in users])
    offset = logits.mean(0)
    _, sigma, vt = np.linalg.svd(logits - offset, full_matrices=False)
    rank = int(min(cfg.rank, int(np.sum(sigma > sigma[0] * 1e-6)) if sigma[0] > 0 else 0))
    # rank 0: every user scores the pool alike, the offset alone ranks it
    factors = np.ascontiguousarray(vt[:rank].T * sigma[:rank]) if rank else np.zeros((len(items), 1))
    _, _, pivots = scipy.linalg.qr(factors.T, pivoting=True, mode="economic")
    chosen = list(dict.fromkeys(pivots[:factors.shape[1]].tolist()))
    spread = np.argsort(-np.linalg.norm(factors, axis=1), kind="stable")
    taken = set(chosen)
    for pos in spread.tolist():
        if len(chosen) >= cfg.probes:
            break
        if pos not in taken:
            chosen.append(pos)
            taken.add(pos)
    probes = np.asarray(chosen, dtype=np.int64)
    index.offset, index.factors = offset, factors
    index.probes, index.probe_map = probes, np.linalg.pinv(factors[probes], rcond=1e-6)
    index.fit_seconds = time.perf_counter() - t0
    return index


INDEX_FILE = "retrieval.safetensors"


def attach_indexes(scorer: Scorer, cfg: RetrievalConfig | None = None, log=None) -> None:
    """Give the scorer every domain pool's index (`scorer.indexes`, `scorer.retrieval`): read from
    `PKG/retrieval.safetensors` when it was written for this package version (`dacdr index`; its
    configuration then wins), else fitted now with `cfg` (seconds per 10,000 items)."""
    saved = load_indexes(scorer)
    if saved is not None:
        scorer.indexes, scorer.retrieval = saved
        return
    cfg = cfg or RetrievalConfig()
    scorer.indexes = {d: build_index(scorer, d, cfg) for d in scorer.domains
                      if len(scorer.pkg.item_pools.get(d, ())) > 0}
    scorer.retrieval = cfg
    if log is not None and any(i.retrieval for i in scorer.indexes.values()):
        log(f"fitted retrieval indexes in {sum(i.fit_seconds for i in scorer.indexes.values()):.1f} s "
            f"(run `dacdr index {scorer.pkg.path}` once to skip this at start-up)")


def _sidecar(scorer: Scorer, cfg: RetrievalConfig) -> dict[str, Any]:
    return {"package_version": scorer.version, "config": asdict(cfg)}


def save_indexes(scorer: Scorer, indexes: dict[str, PoolIndex], cfg: RetrievalConfig) -> Path:
    """Add the fitted indexes to the package (`PKG/retrieval.safetensors`, listed in its manifest like an
    export; the package version, a digest of the model files, does not change)."""
    from safetensors.numpy import save

    from dacdr.package import add_to_package

    tensors = {}
    for d, ix in indexes.items():
        if ix.retrieval:
            arrays = {"offset": ix.offset, "factors": ix.factors, "probes": ix.probes, "probe_map": ix.probe_map}
            # C order: safetensors writes the raw buffer, so a transposed view would be saved scrambled
            tensors |= {f"{d}/{k}": np.ascontiguousarray(v) for k, v in arrays.items()}
    add_to_package(scorer.pkg.path, {INDEX_FILE: save(tensors, metadata={"sidecar": json.dumps(_sidecar(scorer, cfg))})})
    return scorer.pkg.path / INDEX_FILE


def load_indexes(scorer: Scorer) -> tuple[dict[str, PoolIndex], RetrievalConfig] | None:
    """The package's saved indexes and their configuration when its manifest lists them and they were
    written for this package version; None otherwise. A listed file whose sha256 differs is a `PackageError`."""
    import hashlib

    from safetensors import SafetensorError
    from safetensors.numpy import load

    from dacdr.package import MANIFEST, PackageError

    digest = scorer.pkg.manifest["files"].get(INDEX_FILE)
    if digest is None:
        return None
    try:
        data = (scorer.pkg.path / INDEX_FILE).read_bytes()
    except OSError as e:
        raise PackageError(f"{INDEX_FILE}: unreadable ({e.strerror})") from e
    if hashlib.sha256(data).hexdigest() != digest:  # re-checked: the file is read after the package's check
        raise PackageError(f"{INDEX_FILE}: sha256 differs from {MANIFEST} (file modified or corrupt)")
    try:
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        side = json.loads(header.get("__metadata__", {}).get("sidecar", "{}"))
        if side.get("package_version") != scorer.version:
            return None  # written for another package version: never used
        cfg = RetrievalConfig(**side["config"])
        tensors = load(data)
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise PackageError(f"{INDEX_FILE}: not a retrieval index ({e})") from e
    out: dict[str, PoolIndex] = {}
    for d, dom in scorer.domains.items():
        items = np.asarray(scorer.pkg.item_pools.get(d, np.zeros(0, np.int64)), dtype=np.int64)
        if len(items) == 0:
            continue
        ix = PoolIndex(d, dom["index"], items)
        if f"{d}/factors" in tensors:
            ix.offset, ix.factors = tensors[f"{d}/offset"], tensors[f"{d}/factors"]
            ix.probes, ix.probe_map = tensors[f"{d}/probes"], tensors[f"{d}/probe_map"]
            n, r = ix.factors.shape if ix.factors.ndim == 2 else (-1, -1)
            if (n != len(items) or ix.offset.shape != (n,) or ix.probe_map.shape != (r, len(ix.probes))
                    or len(ix.probes) == 0 or ix.probes.min() < 0 or ix.probes.max() >= n):
                raise PackageError(f"{INDEX_FILE}: the index of {d!r} does not fit its pool of {len(items)} items")
        out[d] = ix
    return out, cfg


def _item_id(scorer: Scorer, idx: int) -> str:
    return scorer.item_vocab.values[idx - FIRST_ID]


def recommend(scorer: Scorer, q: ScoreQuery, k: int, exclude: list[str | int] | None = None,
              exclude_history: bool = True, exact: bool = False) -> dict[str, Any]:
    """The top `k` items of the domain's pool for one user (`attach_indexes` first); `q.items` is ignored."""
    domain_row = scorer.domain_row(q)
    cfg = scorer.retrieval
    index = scorer.indexes.get(q.domain)
    if index is None or len(index.items) == 0:
        raise RequestError("domain", f"the package holds no item pool for domain {q.domain!r} "
                                     "(packages built before pools were stored: rebuild with `dacdr package`)")
    r = scorer.resolve(q)
    excluded = np.zeros(len(index.items), dtype=bool)
    unknown: list[str | int] = []
    if exclude:
        idx = np.fromiter((scorer.item_vocab.lookup(i) for i in exclude), np.int64, len(exclude))
        unknown = [exclude[j] for j in np.flatnonzero(idx == OOV)]
        excluded |= np.isin(index.items, idx)
    if exclude_history and len(r.tokens):
        excluded |= np.isin(index.items, r.tokens[:, scorer.spec.sequence_fields.index("item")])
    allowed = np.flatnonzero(~excluded)
    if exact or not index.retrieval:
        positions = allowed
        scores = score_items(scorer, r, domain_row, q.user_id, index.items[positions])
        mode = "exact"
    else:
        probes = index.probes
        probe_scores = score_items(scorer, r, domain_row, q.user_id, index.items[probes])
        user_vec = index.probe_map @ (_logits(scorer, probe_scores) - index.offset[probes])
        proxy = index.offset + index.factors @ user_vec
        proxy[excluded] = -np.inf
        proxy[probes] = -np.inf  # already scored exactly
        n_rerank = min(cfg.rerank, int(np.isfinite(proxy).sum()))
        best = np.argpartition(-proxy, n_rerank - 1)[:n_rerank] if n_rerank else np.zeros(0, np.int64)
        rerank_scores = score_items(scorer, r, domain_row, q.user_id, index.items[best])
        keep = ~excluded[probes]
        positions = np.concatenate([probes[keep], best])
        scores = np.concatenate([probe_scores[keep], rerank_scores])
        mode = "retrieval"
    top = np.argsort(-scores, kind="stable")[:k]
    chosen = positions[top]
    return {
        "user_id": q.user_id, "domain": q.domain,
        "items": [{"item": _item_id(scorer, int(i)), "score": float(s)}
                  for i, s in zip(index.items[chosen], scores[top], strict=True)],
        "unknown_items": unknown,
        "history": r.summary(),
        "retrieval": {"mode": mode, "pool": len(index.items), "excluded": int(excluded.sum()),
                      "scored_exactly": len(positions)},
        "model_version": scorer.version,
        "_resolved": r, "_domain_row": domain_row, "_item_idx": index.items[chosen],
    }
