"""`dacdr bench`: Table 2 layout, CSV, metrics.json schema, paired test, CLI errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from dacdr.cli import app
from dacdr.config import TrainConfig
from dacdr.data.synthetic import get_preset
from dacdr.models import baselines, dacdr_variants, paper_order
from dacdr.recipes.bench import BenchSettings, bench_settings, run_bench
from dacdr.reporting.significance import ablation_tests, paired_test, paired_tests
from dacdr.reporting.tables import ablation_markdown, table2_markdown


def test_paired_test_matches_the_textbook_formula():
    a, b = [0.70, 0.72, 0.71, 0.69], [0.68, 0.71, 0.69, 0.69]
    d = np.subtract(a, b)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    res = paired_test(a, b)
    assert res["t"] == pytest.approx(t)
    assert res["mean_diff"] == pytest.approx(d.mean()) and res["n_seeds"] == 4
    assert 0 < res["p_value"] < 1
    one = paired_test([0.7], [0.6])
    assert math.isnan(one["p_value"]) and one["mean_diff"] == pytest.approx(0.1)


def test_paired_tests_pick_the_best_baseline_per_target():
    per_seed = {"DACDR": {"t1": [0.70, 0.71], "t2": [0.60, 0.61]},
                "CMF": {"t1": [0.69, 0.69], "t2": [0.50, 0.52]},
                "STAR": {"t1": [0.60, 0.61], "t2": [0.62, 0.63]},
                "DACDR w/o DA": {"t1": [0.99, 0.99], "t2": [0.99, 0.99]}}  # a variant is never "the baseline"
    tests = paired_tests(per_seed, ["t1", "t2"], baselines())
    assert tests["t1"]["best_baseline"] == "CMF" and tests["t2"]["best_baseline"] == "STAR"
    assert tests["t2"]["mean_diff"] == pytest.approx(-0.02)


def test_table2_rows_follow_the_paper_with_the_oracle_first():
    stat = {"auc": {"mean": 0.6, "std": 0.01}}
    metrics = {"oracle": {"t1": {"auc": 0.8}}, "models": {n: {"t1": stat} for n in reversed(paper_order())}}
    rows = [line.split("|")[1].strip() for line in table2_markdown(metrics, paper_order()).splitlines()[2:]]
    assert rows == ["Oracle (true p)", *paper_order()]


def test_ablation_tests_pair_dacdr_with_each_ablation():
    per_seed = {"DACDR": {"t1": [0.70, 0.72], "t2": [0.60, 0.62]},
                "DACDR w/o IA": {"t1": [0.69, 0.70], "t2": [0.60, 0.60]},
                "DACDR w/o DA&IA": {"t1": [0.71, 0.73], "t2": [0.61, 0.63]}}
    tests = ablation_tests(per_seed, ["t1", "t2"], dacdr_variants()[1:])
    assert set(tests) == {"DACDR w/o IA", "DACDR w/o DA&IA"}
    assert tests["DACDR w/o IA"]["targets"]["t1"]["mean_diff"] == pytest.approx(0.015)
    assert tests["DACDR w/o IA"]["mean_of_targets"]["mean_diff"] == pytest.approx(0.0125)
    assert tests["DACDR w/o DA&IA"]["mean_of_targets"]["mean_diff"] == pytest.approx(-0.01)
    assert "| DACDR w/o IA |" in ablation_markdown(tests)


def test_quick_settings_are_smaller_than_the_full_run():
    quick, full = bench_settings(quick=True), bench_settings(seeds=3)
    assert quick.seeds == 1 and full.seeds == 3
    assert full.train.max_steps_per_epoch is None  # the full run: whole epochs, the same for every model
    assert quick.train.max_steps_per_epoch * quick.train.epochs * quick.train.batch_size < 100_000
    assert quick.preset_overrides["n_users"] < get_preset("industrial").n_users


@pytest.mark.slow
def test_parallel_jobs_give_the_same_reports(tmp_path):
    """`jobs=2` trains in two worker processes; every (model, seed) run still lands in its own place."""
    settings = BenchSettings(
        preset="tiny", seeds=2, dim=8, max_len=20, jobs=2,
        train=TrainConfig(epochs=1, max_steps_per_epoch=3, batch_size=256, patience=0, progress=False),
    )
    metrics = run_bench(tmp_path / "bench", settings, models=["CMF", "DACDR w/o DA&IA"], console=Console(quiet=True))
    for name in ("CMF", "DACDR w/o DA&IA"):
        for seed in (0, 1):
            run = json.loads((tmp_path / "bench" / "runs" / f"{name.replace(' ', '_').replace('/', '')}-seed{seed}"
                              / "results.json").read_text())
            assert run["test"]["cold"]["target_1"]["auc"] == metrics["per_seed_cold_auc"][name]["target_1"][seed]


def test_run_bench_writes_every_report(tmp_path):
    settings = BenchSettings(
        preset="tiny", seeds=2, dim=8, max_len=20,
        train=TrainConfig(epochs=1, max_steps_per_epoch=3, batch_size=256, patience=0, progress=False),
    )
    out = tmp_path / "bench"
    metrics = run_bench(out, settings, models=["DACDR", "CMF"], console=Console(quiet=True))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["task"] == "ctr"
    assert {"oracle", "oracle_transferable", "plugin", "models", "models_all_users", "paired_tests",
            "ablation_tests", "per_seed_cold_auc", "bench"} <= set(saved)
    targets = ["target_1", "target_2", "target_3"]
    assert list(saved["models"]["DACDR"]) == targets
    for name in ("DACDR", "CMF"):
        for d in targets:
            per_seed = saved["per_seed_cold_auc"][name][d]
            assert len(per_seed) == 2
            assert saved["models"][name][d]["auc"]["mean"] == pytest.approx(np.mean(per_seed))
    assert saved["paired_tests"]["target_1"]["best_baseline"] == "CMF"
    assert metrics["paired_tests"]["target_1"]["n_seeds"] == 2
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    refs = {"Oracle (true p)", "Oracle, transferable (source-revealed p)", "Plug-in (topic histogram + appeal)"}
    assert {r["model"] for r in rows} == refs | {"DACDR", "CMF"}
    assert len(rows) == 5 * 3 * 2  # (3 references + 2 models) x 3 targets x {cold, all}
    table = (out / "table.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| Oracle (true p)") and lines[2].startswith("| Oracle, transferable")
    assert lines[3].startswith("| Plug-in") and lines[4].startswith("| CMF") and lines[5].startswith("| DACDR")
    assert "DACDR vs its ablations" in table
    for line in lines:  # every row has as many cells as its table's header: no stray empty cell
        assert "| |" not in line, line
    assert (out / "table2.png").stat().st_size > 1000
    # every model trained on the same prepared world, one run directory per (model, seed)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["CMF-seed0", "CMF-seed1", "DACDR-seed0", "DACDR-seed1"]


def test_cli_rejects_an_unknown_model(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--quick", "--models", "NoSuchModel", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown model" in result.output
    assert not (tmp_path / "data").exists()  # failed before generating anything


@pytest.mark.slow
def test_cli_quick_bench_on_the_mechanism_world(tmp_path):
    """`dacdr bench --preset mechanism --quick` runs end to end (three models here, to stay fast) and reports
    the references, the ablation test and the mechanism world's settings."""
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["bench", "--preset", "mechanism", "--quick", "--jobs", "1", "--threads", "1",
                                      "--models", "Pop,DACDR,DACDR w/o DA&IA", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dataset"]["preset"] == "mechanism" and saved["dataset"]["preset_overrides"] == {"n_users": 6000}
    assert set(saved["models"]) == {"Pop", "DACDR", "DACDR w/o DA&IA"}
    assert "DACDR w/o DA&IA" in saved["ablation_tests"]
    for d, ref in saved["oracle_transferable"].items():
        assert saved["plugin"][d]["auc"] < ref["auc"] <= saved["oracle"][d]["auc"] + 0.02
