"""Amazon loaders on small files the tests write: every format, gzip, malformed lines, metadata."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from dacdr.data.dataset import load_dataset
from dacdr.data.loaders import convert, convert_config
from dacdr.data.loaders.amazon import read_metadata, read_reviews
from dacdr.data.loaders.lines import Rejects


def _write(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def _review(user: str, item: str, rating: float, ts: int, **extra) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": ts,
                       "reviewText": "fine, \"quoted\"", **extra})


def test_2014_json_gz_with_malformed_lines(tmp_path):
    lines = [
        _review("u1", "i1", 5.0, 100),
        "{not json",                                          # line 2: syntax error
        _review("u2", "i1", 3.0, 200),
        json.dumps({"reviewerID": "u3", "asin": "i2"}),       # line 4: no rating, no time
        "",                                                   # line 5: blank, skipped
        json.dumps({"reviewerID": "u3", "asin": "i2", "overall": "five", "unixReviewTime": 1}),  # 6: type
        "[1, 2]",                                             # line 7: not an object
        _review("u3", "i2", 4.0, 300),
    ]
    path = _write(tmp_path / "reviews_Books_5.json.gz", lines)
    rejects = Rejects(tmp_path / "rejects.tsv")
    df, n = read_reviews(path, "amazon-2014", rejects, block_bytes=64)  # tiny blocks: many block borders
    rejects.close()
    assert n == 8
    assert df.select("user", "item", "label", "timestamp", "line").rows() == [
        ("u1", "i1", 5.0, 100, 1), ("u2", "i1", 3.0, 200, 3), ("u3", "i2", 4.0, 300, 8)]
    assert rejects.count == 4
    table = pl.read_csv(tmp_path / "rejects.tsv", separator="\t", quote_char=None)
    assert sorted(table["line"].to_list()) == [2, 4, 6, 7]
    assert "label" in table.filter(pl.col("line") == 4)["reason"][0]


@pytest.mark.parametrize("block_bytes", [40, 1 << 20])
def test_block_size_does_not_change_the_result(tmp_path, block_bytes):
    lines = [_review(f"u{i % 7}", f"i{i % 5}", float(1 + i % 5), 1000 + i) for i in range(200)]
    lines[57] = '{"reviewerID": "x", "asin": '  # truncated line
    path = _write(tmp_path / "r.json", lines)
    rejects = Rejects()
    df, n = read_reviews(path, "amazon-2018", rejects, block_bytes=block_bytes)
    assert n == 200 and df.height == 199 and rejects.count == 1
    assert 58 not in df["line"].to_list()
    assert df["line"].to_list() == [i + 1 for i in range(200) if i != 57]


def test_2023_jsonl_milliseconds_and_parent_asin(tmp_path):
    rows = [{"user_id": "A", "parent_asin": "P1", "asin": "C1", "rating": 4.0, "timestamp": 1_600_000_000_123},
            {"user_id": "B", "parent_asin": "P2", "asin": "C2", "rating": 2.0, "timestamp": 1_600_000_100_999}]
    path = _write(tmp_path / "Books.jsonl.gz", [json.dumps(r) for r in rows])
    df, _ = read_reviews(path, "amazon-2023", Rejects())
    assert df["item"].to_list() == ["P1", "P2"]
    assert df["timestamp"].to_list() == [1_600_000_000, 1_600_000_100]


def test_2014_ratings_csv(tmp_path):
    path = _write(tmp_path / "ratings_Books.csv", [
        "u1,i1,5.0,100", "u2,i1,x,200", "u3,i2,4.0", "u4,i3,1.0,300,extra", "u5,i3,2.0,400"])
    rejects = Rejects()
    df, n = read_reviews(path, "amazon-2014-csv", rejects, block_bytes=32)
    assert n == 5
    assert df.select("user", "label", "timestamp", "line").rows() == [("u1", 5.0, 100, 1), ("u5", 2.0, 400, 5)]
    assert rejects.count == 3


def test_metadata_2014_literals_and_2023_json(tmp_path):
    old = _write(tmp_path / "meta_Books.json.gz", [
        "{'asin': 'i1', 'categories': [['Books', 'Mystery', 'Noir']], 'brand': 'Acme'}",
        "{'asin': 'i2', 'categories': [['Books']]}",
        "{'asin': ",
        "{'asin': 'zz', 'categories': [['Books', 'Other']]}",
    ])
    rejects = Rejects()
    meta = read_metadata(old, rejects, items={"i1", "i2"})
    assert meta.rows() == [("i1", "Mystery", "Acme"), ("i2", "Books", None)]
    assert rejects.count == 1
    new = _write(tmp_path / "meta_Books.jsonl", [
        json.dumps({"parent_asin": "P1", "main_category": "Books", "categories": ["Crime"], "store": "S"})])
    assert read_metadata(new, Rejects()).rows() == [("P1", "Crime", "S")]


def test_convert_two_domains_end_to_end(tmp_path):
    books = _write(tmp_path / "reviews_Books_5.json.gz", [
        _review("a", "b1", 5, 10), _review("b", "b2", 4, 20), _review("a", "b2", 2, 30), "garbage",
        _review("a", "b1", 1, 40)])  # a repeated (a, b1): the last one is kept
    movies = _write(tmp_path / "reviews_Movies_and_TV_5.json.gz", [
        _review("a", "m1", 3, 50), _review("c", "m1", 9, 60)])  # rating 9: outside [1, 5], rejected
    meta = _write(tmp_path / "meta_Books.json.gz", ["{'asin': 'b1', 'categories': [['Books', 'Poetry']]}"])
    cfg = convert_config(format="amazon-2014", name="tiny-amazon", source="Books", targets=["Movies_and_TV"],
                        files={"Books": str(books), "Movies_and_TV": str(movies)}, metadata={"Books": str(meta)})
    out = convert(cfg, tmp_path / "ds", log=lambda _: None)
    data = load_dataset(out)
    assert data.spec.task == "rating" and data.spec.has_timestamps and data.spec.item_features == ["category", "brand"]
    inter = data.interactions.sort("timestamp")
    assert inter.filter(pl.col("domain") == "Books").select("user", "item", "label").rows() == [
        ("b", "b2", 4.0), ("a", "b2", 2.0), ("a", "b1", 1.0)]
    assert inter.filter(pl.col("domain") == "Movies_and_TV").height == 1
    report = json.loads((out / "conversion.json").read_text())
    assert report["rejected_lines"] == 2
    rejected = pl.read_csv(out / "rejects.tsv", separator="\t", quote_char=None)
    assert rejected.select("file", "line").rows() == [("reviews_Books_5.json.gz", 4),
                                                       ("reviews_Movies_and_TV_5.json.gz", 2)]
    assert data.items.filter(pl.col("item") == "b1")["category"].to_list() == ["Poetry"]


def test_missing_file_is_named(tmp_path):
    cfg = convert_config(format="amazon-2014", name="x", source="A", targets=["B"],
                        files={"A": str(tmp_path / "nope.json.gz"), "B": str(tmp_path / "nope2.json.gz")})
    with pytest.raises(FileNotFoundError, match="files.A"):
        convert(cfg, tmp_path / "out", log=lambda _: None)


def test_config_rejects_a_domain_without_file():
    with pytest.raises(ValueError, match="no file for domain"):
        convert_config(format="amazon-2014", name="x", source="A", targets=["B"], files={"A": "a.json"})


def test_gzipped_csv_and_recbole_files(tmp_path):
    path = _write(tmp_path / "ratings_Books.csv.gz", ["u1,i1,5.0,100", "u2,i2,4.0,200"])
    df, n = read_reviews(path, "amazon-2014-csv", Rejects())
    assert n == 2 and df["user"].to_list() == ["u1", "u2"]
    inter = _write(tmp_path / "x.inter.gz", ["user_id:token\titem_id:token\trating:float", "a\tb\t3"])
    from dacdr.data.loaders.table import read_ratings_table

    df, n, has_ts = read_ratings_table(inter, {"user": "user_id", "item": "item_id", "rating": "rating"}, Rejects(),
                                       separator="\t")
    assert not has_ts and df.select("user", "item", "label").rows() == [("a", "b", 3.0)]
