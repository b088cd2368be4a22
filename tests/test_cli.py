"""The command line end to end: generate, train, evaluate, demo, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from dacdr.cli import app

runner = CliRunner()


def _config(tmp_path: Path, data: Path, **train) -> Path:
    cfg = {
        "data": {"path": str(data), "max_len": 10},
        "model": {"name": "DACDR", "params": {"dim": 8, "heads": 2}},
        "train": {"epochs": 1, "batch_size": 256, "progress": False} | train,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_generate_train_evaluate(tmp_path, handmade_path):
    data = tmp_path / "tiny"
    r = runner.invoke(app, ["generate", "tiny", "--out", str(data)])
    assert r.exit_code == 0, r.output
    assert (data / "dataset.json").exists()
    cfg = _config(tmp_path, data)
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(cfg), "--out", str(run), "--set", "train.epochs=1"])
    assert r.exit_code == 0, r.output
    for f in ("config.yaml", "log.txt", "history.json", "model.safetensors", "model.json", "results.json"):
        assert (run / f).exists(), f
    first = json.loads((run / "results.json").read_text())
    r = runner.invoke(app, ["evaluate", str(run)])
    assert r.exit_code == 0, r.output
    again = json.loads((run / "results.json").read_text())
    assert again["test"] == first["test"]  # re-evaluation reproduces the metrics exactly
    assert "target_1" in r.output


def test_generate_refuses_to_overwrite(tmp_path):
    data = tmp_path / "d"
    assert runner.invoke(app, ["generate", "tiny", "--out", str(data)]).exit_code == 0
    r = runner.invoke(app, ["generate", "tiny", "--out", str(data)])
    assert r.exit_code != 0


def test_bad_config_value_names_the_field(tmp_path, handmade_path):
    cfg = _config(tmp_path, handmade_path, batch_size=0)
    r = runner.invoke(app, ["train", str(cfg)])
    assert r.exit_code == 2
    assert "train.batch_size" in r.output


def test_unknown_config_key_and_model(tmp_path, handmade_path):
    cfg = _config(tmp_path, handmade_path)
    r = runner.invoke(app, ["train", str(cfg), "--set", "train.epochz=3"])
    assert r.exit_code == 2 and "train.epochz" in r.output
    r = runner.invoke(app, ["train", str(cfg), "--set", "model.name=NoSuchModel", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown model" in r.output


def test_missing_and_malformed_config(tmp_path):
    r = runner.invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "no such config" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    r = runner.invoke(app, ["train", str(bad)])
    assert r.exit_code == 2 and "not valid YAML" in r.output


def test_bad_dataset_fails_with_file_and_column(tmp_path, handmade_path):
    import polars as pl

    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(handmade_path, broken, ignore=shutil.ignore_patterns(".cache"))
    inter = pl.read_parquet(broken / "interactions.parquet").drop("timestamp")
    inter.write_parquet(broken / "interactions.parquet")
    r = runner.invoke(app, ["train", str(_config(tmp_path, broken)), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert "interactions.parquet" in r.output and "timestamp" in r.output
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_evaluate_on_a_non_run_directory(tmp_path):
    r = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert r.exit_code == 2 and "config.yaml" in r.output


@pytest.mark.slow
def test_demo_smoke_writes_every_artifact(tmp_path):
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--preset", "tiny", "--seeds", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "ctr" and metrics["seeds"] == [0, 1]
    assert set(metrics["models"]) == {"DACDR", "DACDR w/o DA", "DACDR w/o IA", "DACDR w/o DA&IA", "DNN-multi"}
    per_seed = [json.loads((out / "runs" / f"DACDR-seed{s}" / "results.json").read_text())["test"]["cold"]
                for s in (0, 1)]
    for domain, per_metric in metrics["models"]["DACDR"].items():
        assert set(per_metric) == {"auc", "gauc", "logloss"}
        aucs = [r[domain]["auc"] for r in per_seed]  # the table's mean ± std are those of the seeds' runs
        assert per_metric["auc"]["mean"] == pytest.approx(np.mean(aucs))
        assert per_metric["auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
        assert 0.5 < metrics["oracle"][domain]["auc"] <= 1.0
    table = (out / "table.md").read_text()
    assert "Oracle" in table and "DACDR w/o DA&IA" in table
    for png in ("validation_curves.png", "attention.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Oracle" in r.output


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "dacdr", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("demo", "generate", "train", "evaluate"):
        assert cmd in out.stdout


@pytest.mark.parametrize("preset", ["nope"])
def test_unknown_preset(tmp_path, preset):
    r = runner.invoke(app, ["generate", preset, "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "tiny" in r.output


def test_resume_refuses_a_changed_config(tmp_path, handmade_path):
    cfg = _config(tmp_path, handmade_path)
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", str(cfg), "--out", str(run)]).exit_code == 0
    r = runner.invoke(app, ["train", str(cfg), "--out", str(run), "--set", "train.lr=0.1"])
    assert r.exit_code == 2 and "different config" in r.output
    r = runner.invoke(app, ["train", str(cfg), "--out", str(run), "--set", "train.lr=0.1", "--no-resume"])
    assert r.exit_code == 0, r.output


def test_resume_accepts_a_config_written_before_a_new_default_field(tmp_path, handmade_path):
    """A run's config.yaml from an older dacdr lacks fields added since; they count as their defaults."""
    cfg = _config(tmp_path, handmade_path)
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", str(cfg), "--out", str(run)]).exit_code == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["train"]["device"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert runner.invoke(app, ["train", str(cfg), "--out", str(run)]).exit_code == 0


def test_models_lists_the_papers_order_with_families():
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("Pop [floor]: dacdr.models.pop.Pop")
    names = [line.split(" [")[0].split(":")[0] for line in lines]
    from dacdr.models import model_names, paper_order

    assert names[: len(paper_order())] == paper_order() and sorted(names) == sorted(model_names())
    assert "DACDR w/o DA [dacdr]: dacdr.models.dacdr.DACDR (variant=no_da)" in r.output
