"""RecBole atomic files, CSV / Parquet with a column mapping, genre domains, duplicate policies."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from dacdr.data.dataset import load_dataset
from dacdr.data.loaders import convert, convert_config
from dacdr.data.loaders.lines import Rejects
from dacdr.data.loaders.table import read_ratings_table

QUIET = {"log": lambda _: None}


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_recbole_typed_header_and_bad_rows(tmp_path):
    inter = _text(tmp_path / "x.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                  "1\ta\t5\t100.0\n2\tb\tbad\t200\n3\tc\t4\n\n4\td\t1\t400\n")
    rejects = Rejects()
    df, n, has_ts = read_ratings_table(
        inter, {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"}, rejects,
        separator="\t")
    assert has_ts and n == 6
    assert df.select("user", "item", "label", "timestamp", "line").rows() == [
        ("1", "a", 5.0, 100, 2), ("4", "d", 1.0, 400, 6)]
    assert rejects.count == 2  # line 3 (rating), line 4 (no timestamp); the blank line 5 is skipped


def test_recbole_without_timestamps_dedup_mean(tmp_path):
    books = _text(tmp_path / "B.inter", "user_id\titem_id\trating\nu1\tb1\t2.0\nu1\tb1\t4.0\nu2\tb2\t5.0\n")
    movies = _text(tmp_path / "M.inter", "user_id\titem_id\trating\nu1\tm1\t3.0\nu2\tm1\t1.0\n")
    cfg = convert_config(format="recbole", name="dense", source="Books", targets=["Movies"],
                        files={"Books": str(books), "Movies": str(movies)}, duplicates="mean")
    data = load_dataset(convert(cfg, tmp_path / "ds", **QUIET))
    assert not data.spec.has_timestamps
    inter = data.interactions.sort("timestamp")
    assert inter.select("user", "item", "label").rows() == [
        ("u1", "b1", 3.0), ("u2", "b2", 5.0), ("u1", "m1", 3.0), ("u2", "m1", 1.0)]
    # file order is the clock, every source row before every target row
    src = inter.filter(pl.col("domain") == "Books")["timestamp"]
    assert src.max() < inter.filter(pl.col("domain") == "Movies")["timestamp"].min()


def test_movielens_style_genre_domains(tmp_path):
    inter = _text(tmp_path / "ml.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                  "1\tToy Story (1995)\t5\t10\n1\tHeat (1995)\t4\t20\n2\tComedy Drama (1990)\t3\t30\n"
                  "2\tDocu (2000)\t2\t40\n")
    items = _text(tmp_path / "ml.item", "item_id:token\tgenre:token_seq\n"
                  "Toy Story (1995)\tAnimation Children's Comedy\nHeat (1995)\tAction Crime Thriller\n"
                  "Comedy Drama (1990)\tComedy Drama\nDocu (2000)\tDocumentary\n")
    cfg = convert_config(format="recbole", name="ml", source="Comedy", targets=["Drama", "Action"],
                        files={"all": str(inter)}, item_file=str(items),
                        genre_domains={"Drama": ["Drama"], "Action": ["Action"], "Comedy": ["Comedy"]})
    data = load_dataset(convert(cfg, tmp_path / "ds", **QUIET))
    by_item = dict(data.interactions.select("item", "domain").iter_rows())
    assert by_item == {"Toy Story (1995)": "Comedy", "Heat (1995)": "Action", "Comedy Drama (1990)": "Drama"}
    assert data.spec.has_timestamps and data.spec.item_features == ["category"]


def test_csv_and_parquet_with_column_mapping(tmp_path):
    csv = _text(tmp_path / "src.csv", "who;what;stars;when\nx;1;5;1000\ny;2;3;2000\n")
    pl.DataFrame({"uid": ["x", "z", None], "iid": [7, 8, 9], "score": [4.0, 2.0, 1.0],
                  "t": [1500, 2500, 3500]}).write_parquet(tmp_path / "tgt.parquet")
    cfg_csv = convert_config(format="table", name="t", source="S", targets=["T"], separator=";",
                            files={"S": str(csv), "T": str(tmp_path / "tgt.parquet")},
                            columns={"user": "who", "item": "what", "rating": "stars", "timestamp": "when"})
    with pytest.raises(ValueError, match="not found"):  # the parquet names its columns differently
        convert(cfg_csv, tmp_path / "bad", **QUIET)
    rejects = Rejects()
    df, n, _ = read_ratings_table(tmp_path / "tgt.parquet", {"user": "uid", "item": "iid", "rating": "score",
                                                             "timestamp": "t"}, rejects)
    assert n == 3 and df["user"].to_list() == ["x", "z"] and rejects.count == 1
    assert df["item"].to_list() == ["7", "8"]


def test_headerless_csv_uses_positional_names(tmp_path):
    csv = _text(tmp_path / "r.csv", "a,i1,4,10\nb,i2,5,20\n")
    df, _, _ = read_ratings_table(csv, {"user": "column_1", "item": "column_2", "rating": "column_3",
                                        "timestamp": "column_4"}, Rejects(), header=False)
    assert df.select("user", "timestamp").rows() == [("a", 10), ("b", 20)]


def test_mapping_errors_name_the_column(tmp_path):
    csv = _text(tmp_path / "r.csv", "u,i,r\n")
    with pytest.raises(ValueError, match="rating='stars'"):
        read_ratings_table(csv, {"user": "u", "item": "i", "rating": "stars"}, Rejects())
    with pytest.raises(ValueError, match="lacks"):
        read_ratings_table(csv, {"user": "u", "item": "i"}, Rejects())
