"""Each loader declares and registers its own options; a wrong option names the format and the field; a new
CSV / Parquet dataset is one YAML."""

from __future__ import annotations

import typing
from typing import Literal

import polars as pl
import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from dacdr.cli import app
from dacdr.config import ConfigError
from dacdr.data.dataset import load_dataset
from dacdr.data.loaders import LOADERS, ConvertConfig, LoaderOptions, convert_config, register_loader
from dacdr.recipes.experiment import load_experiment

BASE = {"name": "x", "source": "S", "targets": ["T"], "files": {"S": "s.csv", "T": "t.csv"}}


def test_every_format_has_its_own_options_model():
    assert set(LOADERS) == {"amazon-2014", "amazon-2014-csv", "amazon-2018", "amazon-2023", "table", "recbole",
                            "cdrib"}
    union = typing.get_args(typing.get_args(ConvertConfig)[0])
    assert set(union) == set(LOADERS.values())
    for fmt, cls in LOADERS.items():
        assert fmt in typing.get_args(typing.get_type_hints(cls)["format"])
    assert "separator" in LOADERS["table"].model_fields and "separator" not in LOADERS["cdrib"].model_fields
    assert "n_shared_users" not in LOADERS["table"].model_fields


def test_register_loader_refuses_a_format_twice_and_a_format_without_names():
    class Again(LoaderOptions):
        format: Literal["table"]

    with pytest.raises(ValueError, match="'table' registered twice"):
        register_loader(Again)

    class Nameless(LoaderOptions):
        pass

    with pytest.raises(TypeError, match="Literal"):
        register_loader(Nameless)


@pytest.mark.parametrize("fmt,field", [("cdrib", "separator"), ("table", "genre_domains"),
                                       ("amazon-2014", "item_file"), ("recbole", "metadata")])
def test_an_option_of_another_format_names_the_format_and_the_field(fmt, field):
    extra = {"n_shared_users": 10} if fmt == "cdrib" else {}
    with pytest.raises(ValidationError) as err:
        convert_config(BASE | extra, format=fmt, **{field: "x"})
    assert [(e["loc"], e["type"]) for e in err.value.errors()] == [((fmt, field), "extra_forbidden")]


def test_an_experiment_names_the_format_and_the_field(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"name": "e", "models": ["Pop"],
                                    "data": BASE | {"format": "cdrib", "n_shared_users": 5, "header": False}}))
    with pytest.raises(ConfigError, match=r"data\.cdrib\.header: Extra inputs are not permitted"):
        load_experiment(path)
    path.write_text(yaml.safe_dump({"name": "e", "models": ["Pop"], "data": BASE | {"format": "tabel"}}))
    with pytest.raises(ConfigError, match="'tabel' found using 'format' does not match any of the expected tags"):
        load_experiment(path)


def test_a_new_csv_and_parquet_dataset_is_one_yaml(tmp_path):
    """The docs/datasets.md example: a CSV source and a Parquet target with their own column names and
    millisecond timestamps, converted by `dacdr convert` from one YAML with relative paths."""
    raw = tmp_path / "raw"
    raw.mkdir()
    pl.DataFrame({"uid": [f"u{u}" for u in range(20) for _ in range(3)],
                  "sku": [f"b{(u + k) % 7}" for u in range(20) for k in range(3)],
                  "stars": [float(1 + (u + k) % 5) for u in range(20) for k in range(3)],
                  "ts_ms": [1_000_000 * (u * 3 + k) for u in range(20) for k in range(3)]}).write_csv(raw / "books.csv")
    pl.DataFrame({"uid": [f"u{u}" for u in range(10, 30) for _ in range(2)],
                  "sku": [f"m{(u * 2 + k) % 5}" for u in range(10, 30) for k in range(2)],
                  "stars": [float(1 + (u * k) % 5) for u in range(10, 30) for k in range(2)],
                  "ts_ms": [2_000_000 * (u * 2 + k) for u in range(10, 30) for k in range(2)]}).write_parquet(
        raw / "movies.parquet")
    cfg = tmp_path / "my-dataset.yaml"
    cfg.write_text("""\
format: table
name: my-dataset
source: Books
targets: [Movies]
files:
  Books: raw/books.csv
  Movies: raw/movies.parquet
columns: {user: uid, item: sku, rating: stars, timestamp: ts_ms}
timestamp_divisor: 1000
""")
    res = CliRunner().invoke(app, ["convert", str(cfg), "--out", str(tmp_path / "ds")])
    assert res.exit_code == 0, res.output
    data = load_dataset(tmp_path / "ds")
    counts = dict(data.interactions.group_by("domain").len().iter_rows())
    assert counts == {"Books": 60, "Movies": 40}
    assert data.spec.has_timestamps and data.interactions["timestamp"].max() == 2_000 * (29 * 2 + 1)
