"""From request fields to model inputs and back: id look-ups, history resolution, batching.

A `Scorer` is one loaded package plus its engine; the service swaps whole scorers on reload, so a request
that holds a scorer finishes on it whatever happens meanwhile.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dacdr.data.batches import assemble, pack_histories
from dacdr.data.features import OOV
from dacdr.package import ModelPackage, load_package
from dacdr.serving.engines import USER_CACHE, Engine, EngineName, OnnxGraph, make_engine


class RequestError(ValueError):
    """Bad input in a scoring request; `field` is the JSON path of the offending value."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class ScoreQuery:
    """One user's request, already validated for shape by the HTTP schema."""

    user_id: str | int
    domain: str
    items: list[str | int]
    history: list[dict[str, Any]] | None = None
    where: str = ""
    """JSON path prefix for error messages (e.g. `requests[3].`)"""


@dataclass
class Resolved:
    tokens: np.ndarray  # [n, F]
    source: str  # "request" | "store" | "none"
    unknown_user: bool
    unknown_history_items: list[str | int] = field(default_factory=list)
    raw_items: list[str | int] | None = None
    """the request's own history item ids (kept for explanations), aligned with `tokens`"""

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "length": len(self.tokens), "unknown_user": self.unknown_user,
                "unknown_items": self.unknown_history_items}


class Scorer:
    def __init__(self, pkg: ModelPackage, engine: Engine):
        self.pkg, self.engine = pkg, engine
        spec = pkg.spec
        self.spec = spec
        self.version = pkg.version
        self.item_vocab = pkg.vocabs["item"]
        self.behaviour_vocab = pkg.vocabs["behaviour"]
        self.rating_vocab = pkg.vocabs.vocabs.get("rating")
        self.user_vocab = pkg.vocabs.vocabs.get("user")
        self.n_fields = len(spec.sequence_fields)
        self.max_len = spec.max_len
        # sequence field j is item-table column item_col[j], or behaviour / rating (-1 / -2)
        self.item_col = [spec.item_fields.index(f) if f in spec.item_fields else (-1 if f == "behaviour" else -2)
                         for f in spec.sequence_fields]
        self.domains = {d["domain"]: d for d in pkg.domains}
        self.indexes: dict[str, Any] = {}
        """domain -> its item pool and retrieval factors (`dacdr.serving.recommend.attach_indexes`)"""
        self.retrieval: Any = None
        """the `RetrievalConfig` those indexes were fitted with"""
        self.broadcast_fast = getattr(engine, "broadcasts_history", False) and "user" not in pkg.model.inputs
        """one-user inputs are built directly (`_inputs`)"""

    def item_indices(self, items: list[str | int]) -> np.ndarray:
        """Vocabulary indices of request item ids (`Vocab.lookup` over the list, in C: map, not a generator)."""
        return np.fromiter(map(self.item_vocab.index.get, map(str, items), itertools.repeat(OOV)), np.int64,
                           len(items))

    @classmethod
    def load(cls, path: str | Path, engine: EngineName = "torch", threads: int | None = None,
             history_cache: int = 0, onnx_graph: OnnxGraph = "auto", user_cache: int = USER_CACHE) -> Scorer:
        pkg = load_package(path)
        scorer = cls(pkg, make_engine(pkg, engine, threads, onnx_graph, user_cache))
        if history_cache:
            scorer._history = functools.lru_cache(maxsize=history_cache)(scorer._history)
        scorer.warm_up()
        return scorer

    def _history(self, user: str) -> np.ndarray | None:
        tokens = self.pkg.store.history(user)
        if tokens is not None:
            tokens.setflags(write=False)  # may be shared through the cache
        return tokens

    def warm_up(self) -> None:
        """Calls over the shapes traffic brings (history lengths, item counts, batches) before it comes, so
        that no first request pays for lazy initialisation or a new shape (the cold-start tail)."""
        any_target = next(iter(self.domains))
        beh = self.behaviour_vocab.values[0]
        for n_hist in sorted({0, 1, 2, 5, 10, 20, self.max_len // 2, self.max_len}):
            hist = [{"item": "__warmup__", "behaviour": beh, "rating": float(self.spec.label_range[0])}] * n_hist
            for n_items in (1, 8, 100):
                self.score([ScoreQuery("__warmup__", any_target, ["__warmup__"] * n_items, hist)])
        self.score([ScoreQuery("__warmup__", any_target, ["__warmup__"] * 8, None)] * 2)

    # ---------------------------------------------------------------------------------------- inputs
    def _encode_history(self, events: list[dict[str, Any]], where: str) -> tuple[np.ndarray, list]:
        """Tokens of the last `max_len` events (the model reads no more); older ones are skipped unread."""
        first = max(0, len(events) - self.max_len)
        tokens = np.zeros((len(events) - first, self.n_fields), dtype=np.int64)
        unknown: list[str | int] = []
        lo, hi = self.spec.label_range
        for i, ev in enumerate(events[first:], start=first):
            idx = self.item_vocab.lookup(ev["item"])
            if idx == OOV:
                unknown.append(ev["item"])
            beh = self.behaviour_vocab.index.get(str(ev["behaviour"]))
            if beh is None:
                raise RequestError(f"{where}history[{i}].behaviour",
                                   f"unknown behaviour {ev['behaviour']!r}; known: {self.behaviour_vocab.values}")
            for j, col in enumerate(self.item_col):
                if col >= 0:
                    tokens[i - first, j] = self.pkg.item_table[idx, col]
                elif col == -1:
                    tokens[i - first, j] = beh
                else:
                    rating = ev.get("rating")
                    if rating is None:
                        raise RequestError(f"{where}history[{i}].rating", "required for a rating model")
                    if not (math.isfinite(rating) and lo <= rating <= hi):  # the schema refuses NaN / inf too
                        raise RequestError(f"{where}history[{i}].rating",
                                           f"{rating} is outside the model's rating range [{lo:g}, {hi:g}]")
                    # rounded to the nearest whole rating; a whole value never seen in training is unknown (OOV)
                    tokens[i - first, j] = self.rating_vocab.lookup(int(round(rating))) if self.rating_vocab else OOV
        return tokens, unknown

    def resolve(self, q: ScoreQuery) -> Resolved:
        if q.history is not None:
            tokens, unknown = self._encode_history(q.history, q.where)
            raw = [ev["item"] for ev in q.history][-self.max_len:] if self.max_len else []
            return Resolved(tokens[-self.max_len:], "request", False, unknown, raw)
        stored = self._history(str(q.user_id))
        if stored is None:
            return Resolved(np.zeros((0, self.n_fields), dtype=np.int64), "none", True)
        return Resolved(stored[-self.max_len:], "store", False)

    def domain_row(self, q: ScoreQuery) -> int:
        dom = self.domains.get(q.domain)
        if dom is None:
            raise RequestError(f"{q.where}domain", f"unknown domain {q.domain!r}; known: {list(self.domains)}")
        return dom["index"]

    def _inputs(self, resolved: list[Resolved], domain_rows: list[int], item_idx: list[np.ndarray],
                user_ids: list[str | int]) -> dict[str, np.ndarray]:
        """Model inputs for users x their candidate items (item vocabulary indices), one row per item, built by
        the training batches' own `assemble`."""
        n_users = len(resolved)
        if n_users == 1 and self.broadcast_fast:
            # one user, history passed once: what `assemble` builds (most recent last; one masked slot when
            # empty), without its packing
            tokens = resolved[0].tokens
            if len(tokens):
                seq, mask = np.array(tokens[None], dtype=np.int64), np.ones((1, len(tokens)), dtype=np.bool_)  # writable
            else:
                seq, mask = np.zeros((1, 1, self.n_fields), dtype=np.int64), np.zeros((1, 1), dtype=np.bool_)
            return {"seq": seq, "seq_mask": mask, "item": self.pkg.item_table[item_idx[0]],
                    "domain": self.pkg.domain_table[domain_rows[0]][None]}
        counts = [len(i) for i in item_idx]
        events, start, end = pack_histories([r.tokens for r in resolved], self.n_fields)
        length = max(1, *(len(r.tokens) for r in resolved))  # one masked slot for all-empty histories
        row_user = np.repeat(np.arange(n_users), counts)
        if n_users == 1 and getattr(self.engine, "broadcasts_history", False):
            # One user: her history and domain once, broadcast by the model over the items (same scores).
            seq_rows, domain_counts = None, [1]
        else:
            seq_rows, domain_counts = row_user, counts
        extra = {}
        if "user" in self.pkg.model.inputs:
            users = np.array([self.user_vocab.lookup(u) if self.user_vocab else OOV for u in user_ids])
            extra["user"] = users[row_user]
        return assemble(
            events, start, end, length, seq_rows=seq_rows,
            item=self.pkg.item_table[np.concatenate(item_idx)],
            domain=self.pkg.domain_table[np.repeat(np.asarray(domain_rows, dtype=np.int64), domain_counts)],
            **extra,
        )

    def predict(self, resolved: list[Resolved], domain_rows: list[int], item_idx: list[np.ndarray],
                user_ids: list[str | int]) -> np.ndarray:
        """The engine's predictions for every (user, item) row, concatenated in order."""
        t0 = time.perf_counter()
        if len(resolved) > 1 and getattr(self.engine, "one_user_per_call", False):
            # the split engine caches each user's side: one call per user reuses it (no history repeated per row)
            preds = np.concatenate([self.engine(self._inputs([r], [d], [i], [u]))
                                    for r, d, i, u in zip(resolved, domain_rows, item_idx, user_ids, strict=True)])
        else:
            preds = self.engine(self._inputs(resolved, domain_rows, item_idx, user_ids))
        self.last_inference_s = time.perf_counter() - t0
        return preds

    def score(self, queries: list[ScoreQuery]) -> list[dict[str, Any]]:
        """Score every query's items in one engine call; one response dict per query, items in order."""
        domain_rows = [self.domain_row(q) for q in queries]
        resolved = [self.resolve(q) for q in queries]
        item_idx = [self.item_indices(q.items) for q in queries]
        preds = self.predict(resolved, domain_rows, item_idx, [q.user_id for q in queries])
        out, start = [], 0
        for q, r, idx in zip(queries, resolved, item_idx, strict=True):
            n = len(idx)
            out.append({
                "user_id": q.user_id, "domain": q.domain,
                "scores": preds[start:start + n].astype(float).tolist(),
                "unknown_items": [q.items[k] for k in np.flatnonzero(idx == OOV)],
                "history": r.summary(),
                "model_version": self.version,
            })
            start += n
        return out
