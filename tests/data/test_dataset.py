"""Loading, validating and writing a dataset directory (docs/data-format.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dacdr.data.dataset import (
    CrossDomainData,
    DatasetError,
    DatasetSpec,
    load_dataset,
    read_spec,
    validate,
    write_dataset,
)


def make_spec(**overrides) -> DatasetSpec:
    fields = dict(
        schema_version=1,
        name="tiny",
        task="ctr",
        label_range=(0, 1),
        source_domain="src",
        target_domains=["t1", "t2"],
        item_features=["category"],
        domain_features=["page_type"],
        behaviour_types=["browse", "click", "impression"],
        test_start=5,
        generator={"seed": 0},
    )
    return DatasetSpec(**(fields | overrides))


def make_data(**overrides) -> CrossDomainData:
    """A small valid ctr dataset; keyword arguments replace whole tables or the spec."""
    tables = dict(
        spec=make_spec(),
        domains=pl.DataFrame(
            {
                "domain": ["src", "t1", "t2"],
                "role": ["source", "target", "target"],
                "page_type": ["home", "feed", "feed"],
            }
        ),
        items=pl.DataFrame(
            {
                "item": [1, 2, 3, 1, 4],
                "domain": ["src", "src", "t1", "t2", "t2"],
                "category": ["a", "b", "a", None, "c"],
            }
        ),
        interactions=pl.DataFrame(
            {
                "user": [10, 10, 11, 11, 12, 12],
                "domain": ["src", "src", "t1", "t2", "src", "t2"],
                "item": [1, 2, 3, 1, 2, 4],
                "behaviour": ["click", "browse", "impression", "impression", "click", "impression"],
                "label": [1.0, 0.0, 1.0, 0.0, 1.0, 1.0],
                "timestamp": [1, 2, 3, 4, 5, 6],
                "p_true": [None, None, 0.7, 0.2, None, 0.9],
            }
        ),
    )
    return CrossDomainData(**(tables | overrides))


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return write_dataset(make_data(), tmp_path / "ds")


def write_broken(tmp_path: Path, **overrides) -> Path:
    return write_dataset(make_data(**overrides), tmp_path / "broken", check=False)


def load_error(path: Path) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    return str(info.value)


# --- round trips ---------------------------------------------------------------------------------


def test_round_trip_keeps_everything(dataset_dir: Path) -> None:
    data = make_data()
    loaded = load_dataset(dataset_dir)
    assert loaded.spec == data.spec
    assert loaded.path == dataset_dir
    assert loaded.spec.domains == ["src", "t1", "t2"]
    for table in ("interactions", "items", "domains"):
        assert getattr(loaded, table).equals(getattr(data, table)), table
    assert loaded.interactions.schema["label"] == pl.Float64
    assert loaded.interactions.schema["timestamp"] == pl.Int64


def test_round_trip_with_string_ids_and_parts(tmp_path: Path) -> None:
    data = make_data()
    data = make_data(
        items=data.items.with_columns(pl.format("i{}", "item").alias("item")),
        interactions=data.interactions.with_columns(
            pl.format("i{}", "item").alias("item"), pl.format("u{}", "user").alias("user")
        ),
    )
    path = write_dataset(data, tmp_path / "parts", rows_per_part=4)
    assert sorted(p.name for p in (path / "interactions").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert load_dataset(path).interactions.equals(data.interactions)


def test_columns_selects_interaction_columns(dataset_dir: Path) -> None:
    loaded = load_dataset(dataset_dir, columns=["user", "item", "timestamp"])
    assert loaded.interactions.columns == ["user", "item", "timestamp"]
    with pytest.raises(DatasetError, match="column 'clicks': requested but not present"):
        load_dataset(dataset_dir, columns=["clicks"])


def test_harmless_types_are_cast(tmp_path: Path) -> None:
    data = make_data()
    inter = data.interactions.with_columns(
        pl.col("label").cast(pl.Int8),
        pl.col("timestamp").cast(pl.Int32),
        pl.col("user").cast(pl.UInt32),
        pl.col("domain").cast(pl.Categorical),
        pl.col("behaviour").cast(pl.Enum(["browse", "click", "impression"])),
        pl.col("p_true").cast(pl.Float32),
    )
    path = write_broken(tmp_path, interactions=inter)
    # large_string, as pandas/pyarrow writers often produce
    table = pq.read_table(path / "domains.parquet")
    pq.write_table(
        table.cast(pa.schema([pa.field(f.name, pa.large_string()) for f in table.schema])), path / "domains.parquet"
    )
    loaded = load_dataset(path)
    assert dict(loaded.interactions.schema) == {
        "user": pl.Int64,
        "domain": pl.String,
        "item": pl.Int64,
        "behaviour": pl.String,
        "label": pl.Float64,
        "timestamp": pl.Int64,
        "p_true": pl.Float64,
    }
    assert loaded.domains.schema["domain"] == pl.String
    validate(loaded)


def test_write_refuses_to_overwrite_unless_asked(dataset_dir: Path) -> None:
    with pytest.raises(FileExistsError):
        write_dataset(make_data(), dataset_dir)
    other = make_data(spec=make_spec(name="renamed"))
    write_dataset(other, dataset_dir, overwrite=True)
    assert load_dataset(dataset_dir).spec.name == "renamed"
    assert [p.name for p in dataset_dir.parent.iterdir()] == ["ds"]  # no temporary leftovers


def test_write_validates_first(tmp_path: Path) -> None:
    bad = make_data(interactions=make_data().interactions.with_columns(pl.lit("jump").alias("behaviour")))
    with pytest.raises(DatasetError, match="behaviour"):
        write_dataset(bad, tmp_path / "ds")
    assert not any(tmp_path.iterdir())


# --- dataset.json --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("task"), "key 'task': missing"),
        (lambda d: d.update(task="click"), "key 'task'"),
        (lambda d: d.update(colour="red"), "key 'colour': unknown key"),
        (
            lambda d: d.update(target_domains=["src", "t1", "t2"]),
            "source_domain 'src' is also listed in target_domains",
        ),
        (lambda d: d.update(label_range=[1, 5]), "label_range must be [0, 1] for task 'ctr'"),
        (lambda d: d.update(task="rating", label_range=[5, 1]), "min < max"),
        (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
        (lambda d: d.update(behaviour_types=["click", "click"]), "behaviour_types lists ['click'] more than once"),
        (lambda d: d.update(item_features=["item"]), "reserved column name"),
    ],
)
def test_bad_descriptor(dataset_dir: Path, edit: Callable[[dict], object], message: str) -> None:
    descriptor = json.loads((dataset_dir / "dataset.json").read_text())
    edit(descriptor)
    (dataset_dir / "dataset.json").write_text(json.dumps(descriptor))
    error = load_error(dataset_dir)
    assert error.startswith("dataset.json: ")
    assert message in error


def test_descriptor_that_does_not_parse(dataset_dir: Path) -> None:
    (dataset_dir / "dataset.json").write_text('{"name": "tiny",')
    assert load_error(dataset_dir).startswith("dataset.json: not valid JSON")


def test_missing_descriptor(dataset_dir: Path) -> None:
    (dataset_dir / "dataset.json").unlink()
    assert load_error(dataset_dir).startswith("dataset.json: file not found")


def test_read_spec_reads_descriptor_alone(dataset_dir: Path) -> None:
    assert read_spec(dataset_dir) == make_spec()
    assert read_spec(dataset_dir / "dataset.json").generator == {"seed": 0}


# --- broken files --------------------------------------------------------------------------------


def test_truncated_parquet_names_the_file(dataset_dir: Path) -> None:
    file = dataset_dir / "interactions.parquet"
    file.write_bytes(file.read_bytes()[:100])
    error = load_error(dataset_dir)
    assert error.startswith("interactions.parquet: not a readable parquet file")


def test_non_parquet_items_file(dataset_dir: Path) -> None:
    (dataset_dir / "items.parquet").write_text("item,domain\n1,src\n")
    assert load_error(dataset_dir).startswith("items.parquet: not a readable parquet file")


def test_corrupt_part_is_named(tmp_path: Path) -> None:
    path = write_dataset(make_data(), tmp_path / "ds", rows_per_part=2)
    (path / "interactions" / "part-00001.parquet").write_bytes(b"PAR1 garbage")
    assert load_error(path).startswith("interactions/part-00001.parquet: not a readable parquet file")


def test_missing_interactions(dataset_dir: Path) -> None:
    (dataset_dir / "interactions.parquet").unlink()
    assert load_error(dataset_dir).startswith("interactions.parquet: file not found")


def test_error_in_a_part_reports_its_local_row(tmp_path: Path) -> None:
    inter = make_data().interactions.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(7.0).otherwise(pl.col("label")).alias("label")
    )
    path = write_dataset(make_data(interactions=inter), tmp_path / "ds", rows_per_part=4, check=False)
    error = load_error(path)
    assert error.startswith("interactions/part-00001.parquet: column 'label': 1 row outside label_range [0, 1]")
    assert "e.g. row 1: {user: 12, domain: 't2', item: 4" in error


# --- broken tables -------------------------------------------------------------------------------

_inter = make_data().interactions


@pytest.mark.parametrize(
    ("interactions", "expected"),
    [
        (_inter.drop("timestamp"), "interactions.parquet: column 'timestamp': missing (columns present: user,"),
        (
            _inter.with_columns(pl.format("2024-01-0{}", "timestamp").alias("timestamp")),
            "interactions.parquet: column 'timestamp': has dtype String, expected integer (int64)",
        ),
        (
            _inter.with_columns(pl.col("timestamp").cast(pl.Float64)),
            "column 'timestamp': has dtype Float64, expected integer",
        ),
        (
            _inter.with_columns(pl.col("user").cast(pl.Float64)),
            "column 'user': has dtype Float64, expected int64 or string",
        ),
        (_inter.with_columns(pl.col("label").cast(pl.String)), "column 'label': has dtype String, expected float64"),
        (
            _inter.with_columns(pl.col("item").cast(pl.String)),
            "column 'item': has dtype String but items.parquet column 'item' has Int64",
        ),
        (
            _inter.with_columns(pl.when(pl.col("user") == 11).then(None).otherwise(pl.col("user")).alias("user")),
            "interactions.parquet: column 'user': 2 rows with a null value, e.g. row 2: {user: None, domain: 't1'",
        ),
        (
            _inter.with_columns(pl.when(pl.col("item") == 3).then(None).otherwise(pl.col("item")).alias("item")),
            "column 'item': 1 row with a null value, e.g. row 2",
        ),
        (
            _inter.with_columns(pl.col("domain").replace("t2", "t9")),
            "column 'domain': 2 rows with a domain not in domains.parquet ['src', 't1', 't2'], e.g. row 3: "
            "{user: 11, domain: 't9'",
        ),
        (
            _inter.with_columns(pl.col("item").replace(4, 3)),
            "column 'item': 1 row with an (item, domain) not in items.parquet, e.g. row 5: {user: 12, domain: 't2', item: 3",
        ),
        (
            _inter.with_columns(pl.col("label").replace(0.0, 3.0)),
            "column 'label': 2 rows outside label_range [0, 1], e.g. row 1: {user: 10, domain: 'src', item: 2, "
            "behaviour: 'browse', label: 3.0, timestamp: 2, p_true: None}",
        ),
        (_inter.with_columns(pl.col("label").replace(0.0, 0.5)), "column 'label': 2 rows neither 0 nor 1"),
        (_inter.with_columns(pl.col("label").replace(0.0, float("nan"))), "column 'label': 2 rows with a NaN label"),
        (
            _inter.with_columns(pl.col("behaviour").replace("browse", "hover")),
            "column 'behaviour': 1 row with a behaviour not in behaviour_types ['browse', 'click', 'impression'], "
            "e.g. row 1",
        ),
        (_inter.with_columns(pl.col("p_true") * 2), "column 'p_true': 2 rows NaN or outside [0, 1], e.g. row 2"),
    ],
    ids=[
        "missing-column",
        "string-timestamp",
        "float-timestamp",
        "float-user",
        "string-label",
        "item-dtype-mismatch",
        "null-user",
        "null-item",
        "unknown-domain",
        "unknown-item",
        "label-out-of-range",
        "non-binary-ctr-label",
        "nan-label",
        "unknown-behaviour",
        "p_true-out-of-range",
    ],
)
def test_bad_interactions(tmp_path: Path, interactions: pl.DataFrame, expected: str) -> None:
    error = load_error(write_broken(tmp_path, interactions=interactions))
    assert expected in error
    assert error.startswith("interactions.parquet: ")


def test_string_timestamp_error_shows_a_row(tmp_path: Path) -> None:
    inter = _inter.with_columns(pl.format("2024-01-0{}", "timestamp").alias("timestamp"))
    error = load_error(write_broken(tmp_path, interactions=inter))
    assert "e.g. row 0: {" in error and "timestamp: '2024-01-01'" in error


_items = make_data().items
_domains = make_data().domains


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"domains": pl.concat([_domains, _domains.head(1)])},
            "domains.parquet: column 'domain': 1 row with a duplicate domain (must be unique), e.g. row 3: "
            "{domain: 'src', role: 'source', page_type: 'home'}",
        ),
        ({"domains": _domains.drop("page_type")}, "domains.parquet: column 'page_type': missing"),
        ({"domains": _domains.head(2)}, "domains.parquet: column 'domain': domain(s) ['t2'] listed in dataset.json"),
        (
            {"domains": _domains.with_columns(pl.col("role").replace("target", "sink"))},
            "domains.parquet: column 'role': 2 rows with a role not in the allowed roles ['source', 'target']",
        ),
        (
            {"domains": _domains.with_columns(pl.lit("target").alias("role"))},
            "domains.parquet: column 'role': 1 row with a role that disagrees with dataset.json",
        ),
        (
            {"items": pl.concat([_items, _items.tail(1)])},
            "items.parquet: column 'item': 1 row with a duplicate (item, domain) pair (must be unique), e.g. row 5",
        ),
        (
            {"items": _items.with_columns(pl.col("domain").replace("t2", "t3"))},
            "items.parquet: column 'domain': 2 rows with a domain not in domains.parquet",
        ),
        ({"items": _items.drop("category")}, "items.parquet: column 'category': missing"),
        (
            {"items": _items.with_columns(pl.col("category").cast(pl.Categorical).to_physical().cast(pl.Float32))},
            "items.parquet: column 'category': has dtype Float32, expected string or int64",
        ),
    ],
    ids=[
        "duplicate-domain",
        "missing-domain-feature",
        "domain-without-row",
        "unknown-role",
        "wrong-role",
        "duplicate-item",
        "item-in-unknown-domain",
        "missing-item-feature",
        "float-item-feature",
    ],
)
def test_bad_domains_and_items(tmp_path: Path, tables: dict[str, pl.DataFrame], expected: str) -> None:
    error = load_error(write_broken(tmp_path, **tables))
    assert expected in error


def test_validate_checks_in_memory_data() -> None:
    validate(make_data())
    with pytest.raises(DatasetError, match=r"column 'timestamp': has dtype Int32, expected integer \(int64\)"):
        validate(make_data(interactions=_inter.with_columns(pl.col("timestamp").cast(pl.Int32))))


def test_rating_dataset(tmp_path: Path) -> None:
    spec = make_spec(task="rating", label_range=(1, 5), behaviour_types=["rating"], test_start=None)
    inter = _inter.drop("p_true").with_columns(
        pl.lit("rating").alias("behaviour"), pl.Series("label", [1.0, 2.0, 3.5, 4.0, 5.0, 3.0])
    )
    loaded = load_dataset(write_dataset(make_data(spec=spec, interactions=inter), tmp_path / "ratings"))
    assert loaded.interactions["label"].to_list() == [1.0, 2.0, 3.5, 4.0, 5.0, 3.0]
    error = load_error(write_broken(tmp_path, spec=spec, interactions=inter.with_columns(pl.col("label") - 1)))
    assert "column 'label': 1 row outside label_range [1, 5], e.g. row 0" in error
