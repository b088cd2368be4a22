"""P2 split invariants and `dacdr experiment` end to end on small files the tests write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from dacdr.cli import app
from dacdr.config import ConfigError
from dacdr.data.dataset import load_dataset
from dacdr.data.samples import prepare
from dacdr.recipes.experiment import load_experiment, run_experiment
from tests.data.loaders.test_cdrib import write_cdrib
from tests.test_ptupcdr_export import write_amazon_pair

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
FAST_TRAIN = {"epochs": 1, "max_steps_per_epoch": 3, "batch_size": 64, "progress": False, "num_threads": 1}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Path:
    return write_amazon_pair(tmp_path_factory.mktemp("exp") / "raw")


@pytest.mark.parametrize("beta", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("seed", [900, 10])
def test_user_split_invariants(pair, beta, seed):
    p = prepare(load_dataset(pair), protocol="users", cold_start_share=beta, seed=seed)
    s, split = p.samples, p.split
    src_users = set(s["user"][s["is_source"]].tolist())
    tgt_users = set(s["user"][~s["is_source"]].tolist())
    overlap = src_users & tgt_users
    test_users = set(s["user"][split.test].tolist())
    assert len(test_users) == round(beta * len(overlap))  # exact share
    assert test_users <= overlap
    # test users have no target rows in training or validation; every target row of theirs is a test row
    assert not test_users & set(s["user"][split.train_target].tolist())
    assert not test_users & set(s["user"][split.valid].tolist())
    n_test_rows = int(np.isin(s["user"], list(test_users))[~s["is_source"]].sum())
    assert len(split.test) == n_test_rows
    # leak-free: each sample's sequence holds only its user's source events strictly before it
    ev = p.events
    for i in np.concatenate([split.test, split.train_target]):
        a, b = s["seq_start"][i], s["seq_end"][i]
        assert (ev["user"][a:b] == s["user"][i]).all()
        assert (ev["timestamp"][a:b] < s["timestamp"][i]).all()
        # nothing earlier of that user was left out, up to max_len
        earlier = int(((ev["user"] == s["user"][i]) & (ev["timestamp"] < s["timestamp"][i])).sum())
        assert b - a == min(earlier, p.spec.max_len)


def test_user_split_draw_differs_by_seed(pair):
    data = load_dataset(pair)
    users = [set(p.samples["user"][p.split.test].tolist())
             for p in (prepare(data, protocol="users", cold_start_share=0.5, seed=s) for s in (900, 1000))]
    assert users[0] != users[1]


def _config(path: Path, raw: Path, **extra) -> Path:
    cfg = {
        "name": "tiny-pair",
        "params": {"raw": str(raw)},
        "data": {"format": "amazon-2014", "name": "pair", "source": "Books", "targets": ["Movies"],
                 "files": {"Books": "{raw}/reviews_Books_5.json.gz", "Movies": "{raw}/reviews_Movies_5.json.gz"}},
        "split": {"betas": [0.2, 0.5], "seeds": [900, 1000, 10], "max_len": 8},
        "models": ["DACDR w/o DA&IA"],
        "optional_models": ["No-Such-Model"],
        "model_params": {"DACDR w/o DA&IA": {"dim": 8}},
        "train": FAST_TRAIN,
        "cache_dir": str(path.parent / "converted"),
        **extra,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_rating_experiment_end_to_end(pair, tmp_path):
    cfg = load_experiment(_config(tmp_path / "exp.yaml", pair.parent))
    metrics = run_experiment(cfg, tmp_path / "out", seeds=2)
    assert list(metrics["scenarios"]) == ["beta=20%", "beta=50%"]
    assert metrics["seeds"] == [900, 1000] and metrics["models_skipped"] == ["No-Such-Model"]
    scen = metrics["scenarios"]["beta=50%"]
    cell = scen["models"]["DACDR w/o DA&IA"]["Movies"]
    assert set(cell) == {"mae", "rmse"}
    assert len(scen["runs"]["DACDR w/o DA&IA"]) == 2
    rmse = [r["test"]["Movies"]["rmse"] for r in scen["runs"]["DACDR w/o DA&IA"]]  # the cell sums up the seeds
    assert cell["rmse"]["mean"] == pytest.approx(np.mean(rmse)) and cell["rmse"]["std"] == pytest.approx(np.std(rmse, ddof=1))
    assert [st["test_users"] for st in scen["splits"]] == [15, 15]  # round(0.5 * 30)
    out = tmp_path / "out"
    table = (out / "table.md").read_text()
    assert "MAE (beta=20%)" in table and "RMSE (beta=50%)" in table and "| DACDR w/o DA&IA |" in table
    assert (out / "results.png").stat().st_size > 0
    assert json.loads((out / "beta_50" / "metrics.json").read_text())["beta"] == 0.5
    # a rerun reuses the finished runs (same numbers)
    again = run_experiment(cfg, tmp_path / "out", seeds=2)
    assert again["scenarios"]["beta=50%"]["models"] == scen["models"]


def test_ranking_experiment_quick(tmp_path, monkeypatch):
    files = write_cdrib(tmp_path / "raw")
    raw = {
        "name": "tiny-cdrib",
        "data": {"format": "cdrib", "name": "c", "source": "game", "targets": ["video"], "files": files,
                 "n_shared_users": 3, "train_negatives": 1, "valid_negatives": 3},
        "split": {"protocol": "periods", "seeds": [1, 2], "max_len": 8},
        "ranking": {"negatives": 10, "seed": 0},
        "models": ["DNN-multi"],
        "model_params": {"DNN-multi": {"dim": 8, "hidden": [16]}},
        "train": FAST_TRAIN,
        "cache_dir": str(tmp_path / "converted"),
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    metrics = run_experiment(load_experiment(tmp_path / "c.yaml"), tmp_path / "out", quick=True)
    scen = metrics["scenarios"]["published split"]
    assert set(scen["models"]["DNN-multi"]["video"]) == {"mrr", "ndcg@5", "ndcg@10", "hr@1", "hr@5", "hr@10"}
    assert scen["runs"]["DNN-multi"][0]["test"]["video"]["n"] == 3
    assert "NDCG@10" in (tmp_path / "out" / "table.md").read_text()
    # a rerun reuses each finished run's ranking (same checkpoint, same candidates) instead of scoring again
    import dacdr.ranking

    def no_scoring(*args, **kwargs):
        raise AssertionError("a finished run was ranked again")

    monkeypatch.setattr(dacdr.ranking, "ranking_report", no_scoring)
    again = run_experiment(load_experiment(tmp_path / "c.yaml"), tmp_path / "out", quick=True)
    assert again["scenarios"]["published split"]["models"] == scen["models"]
    # other candidates (a changed ranking config) are scored again
    raw["ranking"]["negatives"] = 5
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(AssertionError, match="ranked again"):
        run_experiment(load_experiment(tmp_path / "c.yaml"), tmp_path / "out", quick=True)


def test_config_errors_name_the_field(pair, tmp_path):
    path = _config(tmp_path / "exp.yaml", pair.parent, params={})
    with pytest.raises(ConfigError, match=r"data.files.Books: parameter \{raw\} is not set"):
        load_experiment(path)
    path = _config(tmp_path / "exp2.yaml", pair.parent, split={"betas": [1.5]})
    with pytest.raises(ConfigError, match="betas must lie in"):
        load_experiment(path)
    cfg = load_experiment(_config(tmp_path / "exp3.yaml", pair.parent, models=["Nope"], model_params={}))
    with pytest.raises(KeyError, match="unknown model 'Nope'"):
        run_experiment(cfg, tmp_path / "out")


def test_cli_experiment_and_export(pair, tmp_path):
    runner = CliRunner()
    cfg = _config(tmp_path / "exp.yaml", pair.parent)
    res = runner.invoke(app, ["experiment", str(cfg), "--quick", "--out", str(tmp_path / "out"),
                              "--param", f"raw={pair.parent}"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["quick"] is True
    res = runner.invoke(app, ["export-split", str(pair), "--out", str(tmp_path / "ptu"), "--beta", "0.5"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ptu" / "train_meta.csv").exists()
    res = runner.invoke(app, ["export-split", str(pair), "--out", str(tmp_path / "ptu2"), "--beta", "1.5"])
    assert res.exit_code == 2 and "--beta 1.5" in res.output


@pytest.mark.skipif(not (SHARED / "cdrib").is_dir(), reason="../shared/data is absent")
def test_shared_configs_validate():
    root = Path(__file__).resolve().parents[1] / "configs" / "experiments"
    for name in ("amazon-dense", "cdrib-game-video", "cdrib-video-game", "movielens-1m"):
        cfg = load_experiment(root / f"{name}.yaml")
        for p in cfg.data.files.values():
            assert Path(p).exists(), p


@pytest.mark.parametrize("name", ["amazon2014-movies-cds", "amazon2014-books-movies", "amazon2014-books-cds"])
def test_table3_configs_take_the_raw_directory(name, tmp_path):
    path = Path(__file__).resolve().parents[1] / "configs" / "experiments" / f"{name}.yaml"
    with pytest.raises(ConfigError, match="raw_dir"):
        load_experiment(path)
    cfg = load_experiment(path, {"raw_dir": str(tmp_path)})
    assert cfg.split.betas == [0.2, 0.5, 0.8] and cfg.split.seeds == [900, 1000, 10, 2020, 500]
    assert all(Path(p).parent == tmp_path and p.endswith("_5.json.gz") for p in cfg.data.files.values())
    assert cfg.data.format == "amazon-2014" and "DACDR" in cfg.models
