"""The PTUPCDR-format export read back as the PTUPCDR code reads it, and its invariants."""

from __future__ import annotations

import ast
import csv
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from dacdr.data.dataset import load_dataset
from dacdr.data.loaders import convert, convert_config
from dacdr.data.ptupcdr import FILES, export_ptupcdr
from dacdr.data.samples import prepare

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
POS_SEQ = re.compile(r"^\[(\d+(, \d+)*)?\]$")


def write_amazon_pair(root: Path, n_users: int = 60, seed: int = 0) -> Path:
    """Two Amazon-2014-style review files with random ratings and times; users 0..39 in both domains."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for domain, users, n_items in (("Books", range(0, 40), 30), ("Movies", range(10, n_users), 20)):
        lines = []
        for u in users:
            for i in rng.choice(n_items, int(rng.integers(2, 8)), replace=False):
                lines.append(json.dumps({"reviewerID": f"U{u}", "asin": f"{domain[0]}{i}",
                                         "overall": float(rng.integers(1, 6)),
                                         "unixReviewTime": int(rng.integers(1_000, 2_000))}))
        with gzip.open(root / f"reviews_{domain}_5.json.gz", "wt") as f:
            f.write("\n".join(lines) + "\n")
    cfg = convert_config(format="amazon-2014", name="pair", source="Books", targets=["Movies"],
                        files={d: str(root / f"reviews_{d}_5.json.gz") for d in ("Books", "Movies")})
    return convert(cfg, root / "ds", log=lambda _: None)


@pytest.fixture(scope="module")
def pair_path(tmp_path_factory) -> Path:
    return write_amazon_pair(tmp_path_factory.mktemp("pair") / "raw")


def read_back(folder: Path) -> dict[str, list[list[str]]]:
    """Parse each file the way PTUPCDR's `read_log_data` does: header-less CSV, `eval` of pos_seq."""
    out = {}
    for name in (*FILES, "valid.csv"):
        with open(folder / name, newline="") as f:
            out[name] = list(csv.reader(f))
    return out


@pytest.mark.parametrize("mode", ["ptupcdr", "leak-free"])
@pytest.mark.parametrize("beta", [0.2, 0.5, 0.8])
def test_export_invariants(pair_path, tmp_path, mode, beta):
    data = load_dataset(pair_path)
    kwargs = {"sequence_cutoff": "all"} if mode == "ptupcdr" else {}
    prepared = prepare(data, protocol="users", cold_start_share=beta, seed=900, **kwargs)
    folder = export_ptupcdr(prepared, tmp_path / "out")
    files = read_back(folder)
    info = json.loads((folder / "ptupcdr.json").read_text())
    n_src = info["source_items"]

    # one user id space; source item ids first, then target ones
    for name, rows in files.items():
        width = 3 if name in ("train_src.csv", "train_tgt.csv") else 4
        assert all(len(r) == width for r in rows), name
        uids = [int(r[0]) for r in rows]
        iids = [int(r[1]) for r in rows]
        assert all(0 <= u < info["uid"] for u in uids)
        if name == "train_src.csv":
            assert all(0 <= i < n_src for i in iids)
        else:
            assert all(n_src <= i < info["iid"] for i in iids)
        for r in rows:
            assert 1.0 <= float(r[2]) <= 5.0
    # the beta share of overlapping users is exact (Python's round, as in the PTUPCDR code)
    overlap = 40 - 10
    test_users = {r[0] for r in files["test.csv"]}
    assert len(test_users) == round(beta * overlap) == info["test_users"]
    assert info["overlapping_users"] == overlap
    # test users have no target rows in training; meta rows are overlapping training users
    assert not test_users & {r[0] for r in files["train_tgt.csv"]}
    assert not test_users & {r[0] for r in files["train_meta.csv"]}
    src_users = {r[0] for r in files["train_src.csv"]}
    assert {r[0] for r in files["train_meta.csv"]} <= src_users
    assert test_users <= src_users

    # pos_seq: "[a, b, c]" of the user's source items rated > 3, before the row (leak-free) or all
    src_rating = {(r[0], int(r[1])): float(r[2]) for r in files["train_src.csv"]}
    items = {int(row["iid"]): row["item"] for row in csv.DictReader((folder / "items.csv").open())}
    users = {row["uid"]: row["user"] for row in csv.DictReader((folder / "users.csv").open())}
    inter = data.interactions
    ts = {(u, d, i): t for u, d, i, t in inter.select("user", "domain", "item", "timestamp").iter_rows()}
    for name in ("train_meta.csv", "test.csv"):
        for uid, iid, _, seq in files[name]:
            assert POS_SEQ.match(seq), seq
            seq_ids = ast.literal_eval(seq)
            # PTUPCDR's own parser: strip the brackets, split on ", ", int() each ('' of [] -> padding)
            parts = seq.rstrip("]").lstrip("[").split(", ")
            assert parts == [""] if not seq_ids else [int(x) for x in parts] == seq_ids
            assert all(0 <= i < n_src for i in seq_ids)
            assert all(src_rating[(uid, i)] > 3 for i in seq_ids)
            row_ts = ts[(users[uid], "Movies", items[int(iid)])]
            src_ts = [ts[(users[uid], "Books", items[i])] for i in seq_ids]
            assert src_ts == sorted(src_ts)
            all_pos = [i for (u, i), y in src_rating.items() if u == uid and y > 3]
            if mode == "leak-free":
                assert all(t < row_ts for t in src_ts)
                assert len(seq_ids) == sum(ts[(users[uid], "Books", items[i])] < row_ts for i in all_pos)
            else:
                assert sorted(seq_ids) == sorted(all_pos)


def test_export_rejects_a_ctr_dataset(tiny_prepared, tmp_path):
    with pytest.raises(ValueError, match="rating dataset"):
        export_ptupcdr(tiny_prepared, tmp_path / "x")


@pytest.mark.skipif(not (SHARED / "amazon-dense").is_dir(), reason="../shared/data is absent")
def test_amazon_dense_export(tmp_path):
    cfg = convert_config(format="recbole", name="amazon-dense", source="Books", targets=["Movies_and_TV"],
                        files={"Books": str(SHARED / "amazon-dense" / "Amazon-Books-Dense.inter"),
                               "Movies_and_TV": str(SHARED / "amazon-dense" / "Amazon-Movies-Dense.inter")})
    data = load_dataset(convert(cfg, tmp_path / "ds", log=lambda _: None))
    assert data.interactions.height == 38_149 - 6_645 + 68_023 - 5_939  # repeated pairs merged
    prepared = prepare(data, protocol="users", cold_start_share=0.5, seed=1000, sequence_cutoff="all")
    folder = export_ptupcdr(prepared, tmp_path / "out")
    info = json.loads((folder / "ptupcdr.json").read_text())
    assert info["overlapping_users"] == 1_329 and info["test_users"] == round(0.5 * 1_329)
    rows = read_back(folder)
    assert len(rows["train_src.csv"]) == 38_149 - 6_645
    assert all(POS_SEQ.match(r[3]) for r in rows["test.csv"])
