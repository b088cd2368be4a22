"""Export a prepared P2 split in the on-disk format of the official PTUPCDR code (Zhu et al., WSDM 2022).

That code reads ``data/ready/_<train>_<test>/tgt_<T>_src_<S>/`` with four header-less CSVs:

| file | columns | rows |
|---|---|---|
| ``train_src.csv`` | uid, iid, y | every source-domain rating |
| ``train_tgt.csv`` | uid, iid, y | target ratings of the training users |
| ``train_meta.csv`` | uid, iid, y, pos_seq | target ratings of training users who also have source ratings |
| ``test.csv`` | uid, iid, y, pos_seq | target ratings of the cold-start test users |

One user id space ``0..U-1`` across both domains; source item ids ``0..I_s-1`` first, then target item ids
``I_s..I_s+I_t-1``. ``pos_seq`` is the list of source item ids the user rated above 3, oldest first,
written as ``"[a, b, c]"`` (what ``pandas.to_csv`` writes for a Python list; the code reads it with
``eval`` and keeps the last 20). Here each row's ``pos_seq`` is that row's own source sequence (the
leak-free cut when the split was prepared with ``sequence_cutoff='before'``, the whole history with
``'all'``), so both codes see identical data. Besides the four files this writes ``valid.csv`` (same
columns as ``test.csv``; PTUPCDR ignores it), ``users.csv`` and ``items.csv`` (id maps back to the raw ids)
and ``ptupcdr.json`` (the ``uid`` / ``iid`` table sizes the PTUPCDR ``config.json`` needs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from dacdr.data.features import FIRST_ID
from dacdr.data.samples import PreparedData

FILES = ("train_src.csv", "train_tgt.csv", "train_meta.csv", "test.csv")
POSITIVE_ABOVE = 3.0  # PTUPCDR: pos_seq keeps source ratings y > 3


def _raw(prepared: PreparedData, field: str, idx: np.ndarray) -> list[str]:
    values = prepared.vocabs[field].values
    return [values[i - FIRST_ID] if i >= FIRST_ID else "<oov>" for i in idx]


def export_ptupcdr(prepared: PreparedData, out: str | Path, target: str | None = None) -> Path:
    """Write the split of ``prepared`` (a rating dataset) for the PTUPCDR code; returns ``out``."""
    spec, s, split = prepared.spec, prepared.samples, prepared.split
    if spec.task != "rating":
        raise ValueError(f"PTUPCDR export needs a rating dataset, got task {spec.task!r}")
    target = target or spec.target_domains[0]
    if target not in spec.target_domains:
        raise ValueError(f"target {target!r} is not a target domain of this dataset ({spec.target_domains})")
    if "rating" in getattr(prepared, "embedding_maps", {}):
        raise ValueError("PTUPCDR export needs exact ratings; prepare without min_count / hash_buckets on 'rating'")
    d = prepared.vocabs["domain"].lookup(target)
    is_src = s["is_source"]
    src_rows = np.flatnonzero(is_src)
    in_target = s["domain"] == d
    parts = {
        "train_tgt": split.train_target[in_target[split.train_target]],
        "valid": split.valid[in_target[split.valid]],
        "test": split.test[in_target[split.test]],
    }

    # Id spaces: users of the source and this target; source items first, then target items.
    tgt_rows = np.concatenate(list(parts.values()))
    users = np.unique(np.concatenate([s["user"][src_rows], s["user"][tgt_rows]]))
    src_items = np.unique(s["item"][src_rows])
    tgt_items = np.unique(s["item"][tgt_rows])
    uid = np.full(int(users.max(initial=0)) + 1, -1, dtype=np.int64)
    uid[users] = np.arange(len(users))
    src_iid = np.full(len(prepared.item_table), -1, dtype=np.int64)
    src_iid[src_items] = np.arange(len(src_items))
    tgt_iid = np.full(len(prepared.item_table), -1, dtype=np.int64)
    tgt_iid[tgt_items] = len(src_items) + np.arange(len(tgt_items))

    # Source events (sorted by user, time): rating value and exported item id of each.
    ev = prepared.events
    rating_values = np.array([float(v) for v in prepared.vocabs["rating"].values])
    ev_rating = np.where(ev["rating"] >= FIRST_ID, rating_values[np.maximum(ev["rating"] - FIRST_ID, 0)], np.nan)
    ev_iid = src_iid[ev["item"]]
    ev_positive = ev_rating > POSITIVE_ABOVE
    cum_pos = np.concatenate([[0], np.cumsum(ev_positive)])
    pos_ids = ev_iid[ev_positive]
    user_start = np.searchsorted(ev["user"], s["user"], side="left")

    def pos_seq(rows: np.ndarray) -> list[str]:
        # The whole history up to the sample's cut-off (not truncated to max_len): PTUPCDR keeps its own 20.
        lo, hi = cum_pos[user_start[rows]], cum_pos[s["seq_end"][rows]]
        return ["[" + ", ".join(map(str, pos_ids[a:b].tolist())) + "]" for a, b in zip(lo, hi, strict=True)]

    def frame(rows: np.ndarray, iid: np.ndarray, with_seq: bool) -> pl.DataFrame:
        cols: dict[str, object] = {
            "uid": uid[s["user"][rows]],
            "iid": iid[s["item"][rows]],
            "y": s["label"][rows].astype(np.float64),
        }
        if with_seq:
            cols["pos_seq"] = pos_seq(rows)
        return pl.DataFrame(cols)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src_users = np.unique(s["user"][src_rows])
    meta_rows = parts["train_tgt"][np.isin(s["user"][parts["train_tgt"]], src_users)]
    tables = {
        "train_src.csv": frame(src_rows, src_iid, False),
        "train_tgt.csv": frame(parts["train_tgt"], tgt_iid, False),
        "train_meta.csv": frame(meta_rows, tgt_iid, True),
        "test.csv": frame(parts["test"], tgt_iid, True),
        "valid.csv": frame(parts["valid"], tgt_iid, True),
    }
    for name, df in tables.items():
        # pandas.to_csv quotes a field holding the separator; polars does the same with quote_style necessary.
        df.write_csv(out / name, include_header=False, quote_style="necessary")
    pl.DataFrame({"uid": np.arange(len(users)), "user": _raw(prepared, "user", users)}).write_csv(out / "users.csv")
    all_items = np.concatenate([src_items, tgt_items])
    pl.DataFrame({
        "iid": np.arange(len(all_items)),
        "domain": [spec.source_domain] * len(src_items) + [target] * len(tgt_items),
        "item": _raw(prepared, "item", all_items),
    }).write_csv(out / "items.csv")
    test_users = np.unique(s["user"][parts["test"]])
    overlap = np.intersect1d(src_users, np.unique(s["user"][tgt_rows]))
    (out / "ptupcdr.json").write_text(json.dumps({
        "src": spec.source_domain,
        "tgt": target,
        "uid": int(len(users)),
        "iid": int(len(all_items)),
        "source_items": int(len(src_items)),
        "target_items": int(len(tgt_items)),
        "overlapping_users": int(len(overlap)),
        "test_users": int(len(test_users)),
        "rows": {k.removesuffix(".csv"): v.height for k, v in tables.items()},
        "split": prepared.meta,
    }, indent=1) + "\n")
    return out
