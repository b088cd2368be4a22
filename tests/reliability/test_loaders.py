"""Loaders on damaged inputs: each failure one line naming the file and the problem, nothing left behind."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dacdr.cli import app as cli_app


def _reviews(domain: str, users: range, n_items: int) -> bytes:
    lines = [json.dumps({"reviewerID": f"U{u}", "asin": f"{domain[0]}{(u * 7 + k) % n_items}",
                         "overall": float(1 + (u + k) % 5), "unixReviewTime": 1000 + 10 * u + k})
             for u in users for k in range(4)]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    (root / "Books.json.gz").write_bytes(gzip.compress(_reviews("Books", range(0, 40), 30)))
    movies = gzip.compress(b'{"not json\n' * 3 + _reviews("Movies", range(10, 60), 20) * 200, mtime=0)  # ~3 MiB
    (root / "Movies.json.gz").write_bytes(movies)
    (root / "truncated.json.gz").write_bytes(movies[: len(movies) // 2])  # the bad lines come first
    corrupt = bytearray(movies)
    for i in range(20, 60):  # inside the first deflate block
        corrupt[i] ^= 0x5A
    (root / "corrupt.json.gz").write_bytes(bytes(corrupt))
    (root / "a-folder").mkdir()
    (root / "broken.parquet").write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
    header = "user_id,item_id,rating,timestamp\n"
    (root / "src.csv").write_text(header + "".join(f"u{u},i{i},{1 + (u + i) % 5},{u * 10 + i}\n"
                                                   for u in range(30) for i in range(5)) + "u1,i1,3,5\nu1,i1,4,6\n")
    (root / "tgt.csv").write_text(header + "".join(f"u{u},t{i},{1 + (u * i) % 5},{u * 10 + i}\n"
                                                   for u in range(10, 40) for i in range(4)))
    (root / "header-only.csv").write_text(header)
    return root


def _convert(raw: Path, tmp_path: Path, fmt: str, files: dict[str, str]):
    cfg = tmp_path / "convert.yaml"
    source, target = list(files)
    cfg.write_text(yaml.safe_dump({"format": fmt, "name": "x", "source": source, "targets": [target],
                                   "files": {d: str(raw / f) for d, f in files.items()},
                                   "block_mb": 1}))  # 1 MiB blocks: lines are parsed (and rejected) before the damage
    return CliRunner().invoke(cli_app, ["convert", str(cfg), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("bad,problem", [
    ("truncated.json.gz", "truncated compressed file"),
    ("corrupt.json.gz", "corrupt gzip data"),
    ("a-folder", "is a directory, expected a file"),
])
def test_a_damaged_review_file_is_one_line_naming_it(raw, tmp_path, bad, problem):
    result = _convert(raw, tmp_path, "amazon-2014", {"Books": "Books.json.gz", "Movies": bad})
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "error:" in text and bad in text and problem in text, text
    assert "Traceback" not in text and "Aborted" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["convert.yaml"], "staging files left behind"


def test_a_corrupt_parquet_file_is_named(raw, tmp_path):
    result = _convert(raw, tmp_path, "table", {"Books": "src.csv", "Movies": "broken.parquet"})
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "broken.parquet: unreadable" in text and "Traceback" not in text


def test_a_target_with_a_header_and_no_rows_is_an_error(raw, tmp_path):
    result = _convert(raw, tmp_path, "table", {"Books": "src.csv", "Movies": "header-only.csv"})
    assert result.exit_code == 2, result.output
    assert "Movies: no ratings in" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_merged_duplicates_are_in_the_report(raw, tmp_path):
    result = _convert(raw, tmp_path, "table", {"Books": "src.csv", "Movies": "tgt.csv"})
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert report["merged_duplicates"] == {"Books": 2, "Movies": 0}  # (u1, i1) three times


def test_a_good_file_with_bad_lines_still_converts_and_keeps_its_rejects(raw, tmp_path):
    result = _convert(raw, tmp_path, "amazon-2014", {"Books": "Books.json.gz", "Movies": "Movies.json.gz"})
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert report["rejected_lines"] == 3 and (tmp_path / "out" / "rejects.tsv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["convert.yaml", "out"]
