"""Tests of the synthetic world generator (tiny preset: each generation takes about a second)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score

from dacdr.data import synthetic
from dacdr.data.dataset import DatasetError, load_dataset, read_spec, validate, write_dataset_parts
from dacdr.data.synthetic import (
    BEHAVIOUR_TYPES,
    DAY_SECONDS,
    PRESETS,
    SyntheticConfig,
    config,
    generate,
    get_preset,
    summarize,
    world,
    writer,
)

DESCRIPTOR_KEYS = {
    "schema_version",
    "name",
    "task",
    "label_range",
    "source_domain",
    "target_domains",
    "item_features",
    "domain_features",
    "behaviour_types",
    "test_start",
    "has_timestamps",
    "generator",
}


def _frame(root: Path) -> pl.DataFrame:
    return pl.read_parquet(root / "interactions" / "*.parquet")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("tiny", tmp_path_factory.mktemp("tiny") / "ds", seed=0)


@pytest.fixture(scope="module")
def tiny_df(tiny: Path) -> pl.DataFrame:
    return _frame(tiny)


@pytest.fixture(scope="module")
def spec(tiny: Path) -> dict:
    return json.loads((tiny / "dataset.json").read_text())


# ------------------------------------------------------------------------------------------ config


def test_presets_and_overrides() -> None:
    assert set(PRESETS) == {"tiny", "demo", "industrial", "scale", "mechanism", "mechanism-tiny"}
    cfg = get_preset("demo", n_users=123, source={"click_rate": 0.05})
    assert cfg.n_users == 123
    assert cfg.source.click_rate == 0.05
    assert cfg.source.events_per_user == PRESETS["demo"].source.events_per_user  # nested merge keeps the rest
    with pytest.raises(ValueError, match="tiny, demo, industrial, mechanism, scale, mechanism-tiny"):
        get_preset("nope")
    with pytest.raises(ValidationError):
        get_preset("tiny", not_a_field=1)
    with pytest.raises(ValidationError, match="overlap"):
        get_preset("tiny", source_share=0.99)  # too few people without source history for overlap 0.8


def test_every_field_documented() -> None:
    for model in (SyntheticConfig, synthetic.SourceConfig, synthetic.TargetConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


# ------------------------------------------------------------------------------------------ layout


def test_layout(tiny: Path, spec: dict) -> None:
    assert set(spec) >= DESCRIPTOR_KEYS
    cfg = PRESETS["tiny"]
    assert spec["schema_version"] == 1
    assert spec["task"] == "ctr" and spec["label_range"] == [0, 1]
    assert spec["source_domain"] == "source"
    assert spec["target_domains"] == [f"target_{t}" for t in (1, 2, 3)]
    assert spec["item_features"] == ["category", "brand"]
    assert spec["domain_features"] == ["page_type", "business_line"]
    assert spec["behaviour_types"] == list(BEHAVIOUR_TYPES)
    assert spec["test_start"] == (cfg.n_days - 1) * DAY_SECONDS
    assert spec["generator"]["seed"] == 0
    assert SyntheticConfig.model_validate(spec["generator"]["config"]) == cfg

    domains = pl.read_parquet(tiny / "domains.parquet")
    assert domains.schema == {
        "domain": pl.String,
        "role": pl.String,
        "page_type": pl.String,
        "business_line": pl.String,
    }
    assert domains["domain"].to_list() == ["source", *spec["target_domains"]]
    assert domains["role"].to_list() == ["source", "target", "target", "target"]
    # Domain features generalise: two targets share a business line, two share a page type.
    assert domains["business_line"][1:].n_unique() < 3 and domains["page_type"][1:].n_unique() < 3

    items = pl.read_parquet(tiny / "items.parquet")
    # Only public item features: no popularity, quality or latent vector.
    assert items.schema == {"item": pl.Int64, "domain": pl.String, "category": pl.String, "brand": pl.String}
    assert items.select("item", "domain").is_unique().all()
    assert items.filter(pl.col("domain") == "source").height == cfg.n_items

    parts = sorted((tiny / "interactions").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet"]
    assert not (tiny / "interactions.parquet").exists()
    assert list(pl.read_parquet_schema(parts[0]).items()) == [
        ("user", pl.Int64),
        ("domain", pl.String),
        ("item", pl.Int64),
        ("behaviour", pl.String),
        ("label", pl.Float64),
        ("timestamp", pl.Int64),
        ("p_true", pl.Float64),
        ("p_transferable", pl.Float64),
        ("p_plugin", pl.Float64),
    ]
    assert not any(tiny.parent.glob(".*"))  # no temporary directory left behind


def test_passes_the_dataset_contract(tiny: Path) -> None:
    """What the writer wrote loads with the layout's own validation, references included."""
    data = load_dataset(tiny)
    validate(data)
    assert data.interactions.height == _frame(tiny).height
    assert {"p_true", "p_transferable", "p_plugin"} <= set(data.interactions.columns)
    assert data.spec == read_spec(tiny)


def test_summary_auc_equals_sklearn(tiny: Path, tiny_df: pl.DataFrame, spec: dict) -> None:
    stats = summarize(tiny)
    for name in spec["target_domains"]:
        test = tiny_df.filter((pl.col("domain") == name) & (pl.col("timestamp") >= spec["test_start"]))
        expected = roc_auc_score(test["label"].to_numpy(), test["p_true"].to_numpy())
        assert stats[name]["oracle_auc_test"] == pytest.approx(expected, abs=1e-12), name


def test_rows_are_consistent(tiny: Path, tiny_df: pl.DataFrame, spec: dict) -> None:
    df = tiny_df
    assert (
        df.select(
            pl.col(c).null_count() for c in ("user", "domain", "item", "behaviour", "timestamp")
        ).sum_horizontal()[0]
        == 0
    )
    items = pl.read_parquet(tiny / "items.parquet")
    missing = df.select("item", "domain").unique().join(items, on=["item", "domain"], how="anti")
    assert missing.height == 0
    cfg = PRESETS["tiny"]
    assert df["timestamp"].min() >= 0 and df["timestamp"].max() < cfg.n_days * DAY_SECONDS
    assert df["user"].max() < cfg.n_users

    src = df.filter(pl.col("domain") == "source")
    tgt = df.filter(pl.col("domain") != "source")
    assert src["p_true"].null_count() == src.height
    assert tgt["p_true"].null_count() == 0
    assert ((tgt["p_true"] > 0) & (tgt["p_true"] < 1)).all()
    assert (tgt["behaviour"] == "impression").all()
    assert set(src["behaviour"].unique()) == {"browse", "click", "cart", "purchase"}
    assert (src.filter(pl.col("behaviour") == "browse")["label"] == 0).all()
    assert (src.filter(pl.col("behaviour") != "browse")["label"] == 1).all()
    assert set(tgt["label"].unique()) == {0.0, 1.0}
    # Funnel: each step is rarer than the one before.
    counts = src["behaviour"].value_counts().to_dict(as_series=False)
    n = dict(zip(counts["behaviour"], counts["count"], strict=True))
    assert n["browse"] > n["click"] > n["cart"] > n["purchase"] > 0
    # Rows are sorted by (user, timestamp) inside every part.
    assert (
        df.select((pl.col("user").diff() > 0) | ((pl.col("user").diff() == 0) & (pl.col("timestamp").diff() >= 0)))[1:]
        .to_series()
        .all()
    )


def test_cold_start_users(tiny_df: pl.DataFrame, spec: dict) -> None:
    test_start = spec["test_start"]
    df = tiny_df
    src_before = df.filter((pl.col("domain") == "source") & (pl.col("timestamp") < test_start))["user"].unique()
    for t in spec["target_domains"]:
        d = df.filter(pl.col("domain") == t)
        seen = d.filter(pl.col("timestamp") < test_start)["user"].unique()
        test_users = d.filter(pl.col("timestamp") >= test_start)["user"].unique()
        cold = test_users.filter(test_users.is_in(src_before.implode()) & ~test_users.is_in(seen.implode()))
        assert cold.len() >= 30, t  # a sizeable cold-start test set in every target
        cold_rows = d.filter(pl.col("user").is_in(cold.implode()))
        assert cold_rows["timestamp"].min() >= test_start
        assert cold_rows.height >= 100
    # Every source user has history before the test day.
    assert df.filter(pl.col("domain") == "source")["user"].n_unique() == src_before.len()


def test_oracle_auc_sensible(tiny: Path) -> None:
    stats = summarize(tiny)
    for t in ("target_1", "target_2", "target_3"):
        assert 0.6 < stats[t]["oracle_auc_cold"] < 0.92, stats[t]
        assert 0.6 < stats[t]["oracle_auc_test"] < 0.92, stats[t]


# ------------------------------------------------------------------------------------------ the story


@pytest.mark.slow
def test_industrial_overlap_and_ctr(tmp_path: Path) -> None:
    cfg = get_preset("industrial", n_users=12_000)
    stats = summarize(generate(cfg, tmp_path / "ind", seed=1))
    for t, tgt in enumerate(cfg.targets, start=1):
        s = stats[f"target_{t}"]
        assert abs(s["overlap"] - tgt.overlap) < 0.04, (t, s["overlap"])
        assert abs(s["ctr"] / tgt.ctr - 1) < 0.25, (t, s["ctr"])
    assert abs(stats["source"]["ctr"] / cfg.source.click_rate - 1) < 0.1


def test_domain_focus_differs(tiny: Path, tiny_df: pl.DataFrame) -> None:
    """Targets have their own topic mix, unlike the broad source."""
    items = pl.read_parquet(tiny / "items.parquet").select("item", "category").unique()
    mix = (
        tiny_df.join(items, on="item")
        .group_by("domain", "category")
        .len()
        .with_columns(share=pl.col("len") / pl.col("len").sum().over("domain"))
    )
    top3 = mix.sort("share", descending=True).group_by("domain").head(3).group_by("domain").agg(pl.col("share").sum())
    top = dict(zip(top3["domain"], top3["share"], strict=True))
    for t in ("target_1", "target_2", "target_3"):
        assert top[t] > top["source"] + 0.15, top


# ------------------------------------------------------------------------------------------ determinism


@pytest.mark.slow
def test_deterministic(tmp_path: Path, tiny: Path, tiny_df: pl.DataFrame) -> None:
    again = generate("tiny", tmp_path / "again", seed=0)
    for name in ("domains.parquet", "items.parquet", "interactions/part-00000.parquet"):
        assert (again / name).read_bytes() == (tiny / name).read_bytes(), name
    assert _frame(again).equals(tiny_df)
    other = _frame(generate("tiny", tmp_path / "other", seed=1))
    assert not other.equals(tiny_df)


@pytest.mark.slow
def test_chunking_does_not_change_data(tmp_path: Path, tiny_df: pl.DataFrame) -> None:
    one = generate(get_preset("tiny", users_per_part=10**6), tmp_path / "one", seed=0)
    many = generate(get_preset("tiny", users_per_part=1), tmp_path / "many", seed=0)
    n_blocks = -(-PRESETS["tiny"].n_users // config.BLOCK_USERS)
    assert len(list((one / "interactions").glob("*.parquet"))) == 1
    assert len(list((many / "interactions").glob("*.parquet"))) == n_blocks
    assert _frame(one).equals(tiny_df)
    assert _frame(many).equals(tiny_df)
    # A user's rows never straddle two parts (parts hold consecutive user ranges).
    users = [set(pl.read_parquet(p)["user"]) for p in sorted((many / "interactions").glob("*.parquet"))]
    assert sum(len(u) for u in users) == len(set().union(*users))


# ------------------------------------------------------------------------------------------ writing


@pytest.mark.slow
def test_overwrite_refused_and_allowed(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        generate("tiny", out)
    assert (out / "keep.txt").read_text() == "precious"
    generate("tiny", out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "dataset.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary or old directory left
    empty = tmp_path / "empty"
    empty.mkdir()
    generate("tiny", empty)  # an empty directory is fine
    assert (empty / "dataset.json").exists()


def test_crash_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer, "block_rows", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate("tiny", tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []


def test_a_block_breaking_the_contract_is_refused(tmp_path: Path, tiny: Path) -> None:
    """The streaming writer checks every block as it arrives: a bad label names the part file, the column
    and the file-local row (the bad block is that part's second), and no directory appears."""
    data = load_dataset(tiny)
    good = data.interactions.slice(0, 1000)
    bad = good.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(0.5).otherwise(pl.col("label")).alias("label"))
    out = tmp_path / "ds"
    with pytest.raises(DatasetError, match=r"interactions/part-00001\.parquet: column 'label'.*row 1007:"):
        write_dataset_parts(data.spec, data.domains, data.items, [[good], [good, bad]], out)
    assert list(tmp_path.iterdir()) == []
    # the same blocks without the bad one: two parts, the second with two row groups, the rows in order
    write_dataset_parts(data.spec, data.domains, data.items, [[good], [good, good]], out)
    assert load_dataset(out).interactions.equals(pl.concat([good] * 3))
    assert pq.ParquetFile(out / "interactions" / "part-00001.parquet").metadata.num_row_groups == 2


def test_shared_item_pool(tmp_path: Path) -> None:
    cfg = get_preset("tiny", shared_item_pool=True, n_users=300)
    items = pl.read_parquet(generate(cfg, tmp_path / "ds") / "items.parquet")
    per_domain = items.group_by("domain").len()
    assert (per_domain["len"] == cfg.n_items).all()


def test_sparse_interest_is_finite() -> None:
    rng = np.random.default_rng(0)
    x = world._sparse_dirichlet(rng, 0.01, (1000, 24))
    assert np.isfinite(x).all() and np.allclose(x.sum(axis=1), 1)
