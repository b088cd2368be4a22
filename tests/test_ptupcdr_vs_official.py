"""benchmarks/ptupcdr_vs_official.py and ptupcdr_official/drive.py: the timing of the official code's own methods,
the summary's ratios, and the whole comparison end to end (on a stand-in for the official code, and on the
official code itself when a copy is on disk: $PTUPCDR_OFFICIAL, default /tmp/ptupcdr-official)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.benchmark_scripts import BENCH, load
from tests.test_ptupcdr_export import write_amazon_pair

OFFICIAL = Path(os.environ.get("PTUPCDR_OFFICIAL", "/tmp/ptupcdr-official"))


drive = load(BENCH / "ptupcdr_official" / "drive.py")
bench = load(BENCH / "ptupcdr_vs_official.py")

# A stand-in with the official `Run`'s interface and call pattern (train(loader, model, ...), eval_mae(model,
# loader, stage=...), stage names, the best-over-epochs results); it trains nothing.
FAKE_RUN = textwrap.dedent('''
    import csv
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Run:
        def __init__(self, config):
            self.epoch = config["epoch"]
            pair = config["src_tgt_pairs"][config["task"]]
            r = config["ratio"]
            self.dir = (config["root"] + "ready/_" + str(int(r[0] * 10)) + "_" + str(int(r[1] * 10)) + "/tgt_"
                        + pair["tgt"] + "_src_" + pair["src"])
            self.results = {k: 10 for k in ("tgt_mae", "tgt_rmse", "aug_mae", "aug_rmse", "emcdr_mae",
                                             "emcdr_rmse", "ptupcdr_mae", "ptupcdr_rmse")}

        def loader(self, name, batch):
            n = sum(1 for _ in open(self.dir + "/" + name))
            return DataLoader(TensorDataset(torch.zeros(n)), batch)

        def get_data(self):
            return (self.loader("train_src.csv", 256), self.loader("train_tgt.csv", 256),
                    self.loader("train_meta.csv", 128), self.loader("train_meta.csv", 64),
                    self.loader("train_tgt.csv", 256), self.loader("test.csv", 128))

        def train(self, data_loader, model, criterion, optimizer, epoch, stage, mapping=False):
            for _ in data_loader:
                pass

        def eval_mae(self, model, data_loader, stage):
            return 2.0 + 0.1 * self.calls, 3.0 + 0.1 * self.calls

        def eval_mae_last_epochs(self, model, data_loader, stage):
            return self.eval_mae(model, data_loader, stage)

        def main(self):
            src, tgt, meta, map_, aug, test = self.get_data()
            self.calls = 0
            for data, train, evaluate, key in ((tgt, "train_tgt", "test_tgt", "tgt"),
                                               (aug, "train_aug", "test_aug", "aug"),
                                               (src, "train_src", None, None),
                                               (map_, "train_map", "test_map", "emcdr"),
                                               (meta, "train_meta", "test_meta", "ptupcdr")):
                for i in range(self.epoch):
                    self.train(data, None, None, None, i, stage=train)
                    if evaluate:
                        last = key == "ptupcdr" and i == self.epoch - 1
                        mae, rmse = (self.eval_mae_last_epochs if last else self.eval_mae)(None, test, stage=evaluate)
                        self.calls += 1
                        self.results[key + "_mae"] = min(self.results[key + "_mae"], mae)
                        self.results[key + "_rmse"] = min(self.results[key + "_rmse"], rmse)
''')


class _Official:
    """The official call pattern on two toy loaders, for StageTimer."""

    def __init__(self):
        self.results = {"ptupcdr_mae": 10}

    def get_data(self):
        return DataLoader(TensorDataset(torch.zeros(10)), 4), DataLoader(TensorDataset(torch.zeros(6)), 3)

    def train(self, data_loader, model, criterion, optimizer, epoch, stage, mapping=False):
        return None

    def eval_mae(self, model, data_loader, stage):
        return 1.5, 2.5

    def eval_mae_last_epochs(self, model, data_loader, stage):
        return 1.25, 2.25

    def main(self):
        train, test = self.get_data()
        for i in range(2):
            self.train(train, None, None, None, i, stage="train_meta")
            (self.eval_mae if i == 0 else self.eval_mae_last_epochs)(None, test, stage="test_meta")
        self.train(train, None, None, None, 0, stage="train_src")
        self.results["ptupcdr_mae"] = 1.25


def test_stage_timer_records_each_call_of_the_official_methods():
    run = _Official()
    timer = drive.StageTimer(run)
    run.main()
    rep = timer.report()
    meta = rep["stages"]["PTUPCDR"]
    assert len(meta["train_seconds"]) == 2 and len(meta["eval_seconds"]) == 2
    assert (meta["train_rows"], meta["train_batches"], meta["eval_rows"], meta["eval_batches"]) == (10, 3, 6, 2)
    assert meta["test_mae_rmse"] == [[1.5, 2.5], [1.25, 2.25]]
    src = rep["stages"]["CDR pretraining (source MF)"]
    assert len(src["train_seconds"]) == 1 and src["eval_seconds"] == []
    assert rep["results"] == {"ptupcdr_mae": 1.25}
    assert rep["load_seconds"] is not None and set(rep["memory_mib"]) == {"start", "data loaded", "end"}
    assert rep["memory_mib"]["end"]["peak"] >= rep["memory_mib"]["start"]["rss"] > 0


def _report(side: str, seconds: float, peak: float) -> dict:
    names = ["TgtOnly", "DataAug", "CDR pretraining (source MF)", "EMCDR", "PTUPCDR"] if side == "official" \
        else ["source", "target", "meta"]
    stages = {n: {"train_seconds": [seconds, 3 * seconds], "eval_seconds": [0.5, 0.5], "train_rows": 100,
                  "train_batches": 4, "eval_rows": 40} for n in names}
    mem = {p: {"rss": peak / 2, "peak": peak} for p in ("start", "data loaded", "end")}
    if side == "official":
        stages["PTUPCDR"]["test_mae_rmse"] = [[1.0, 1.5], [0.9, 1.4]]
        results = {"ptupcdr_mae": 0.9, "ptupcdr_rmse": 1.4}
        return {"side": side, "stages": stages, "memory_mib": mem, "results": results, "load_seconds": 1.0}
    results = {"mae": 0.8, "rmse": 1.1, "test_rows": 40, "best_meta_epoch": 1}
    return {"side": side, "stages": stages, "memory_mib": mem, "results": results, "load_seconds": 1.0,
            "fit_seconds": 20.0, "test_seconds": 1.0}


def test_summary_ratios():
    s = bench.summarise([_report("official", 2.0, 400.0), _report("dacdr", 1.0, 200.0)])
    for st in s["stages"]:  # median of [x, 3x] is 2x; official / dacdr
        assert st["official"] == 4.0 and st["dacdr"] == 2.0 and st["speedup"] == 2.0
    assert s["train_seconds_ptupcdr"] == {"official": 24.0, "dacdr": 12.0, "speedup": 2.0}
    assert s["pipeline_seconds"] == {"official": 27.0, "dacdr": 21.0, "speedup": 27.0 / 21.0}
    assert s["memory_mib"]["peak"]["ratio"] == 0.5
    assert s["mae_rmse"]["official (last epoch)"] == [0.9, 1.4]
    assert s["test_rows"] == {"official": 40, "dacdr": 40}
    assert "| meta network | 100 / 100 | 4 / 4 | 4.000 | 2.000 | 2.00x |" in bench.markdown(0.2, s)


def test_summary_names_dacdr_schedule_and_its_validation_score():
    dac = _report("dacdr", 1.0, 200.0)
    dac["stages"]["meta"]["train_seconds"] = [1.0]  # one meta epoch against the official code's two
    dac |= {"schedule": {"meta": {"epochs": 1}}, "checkpoint_every": 5}
    dac["results"]["valid_mae_rmse"] = [0.7, 0.9]
    s = bench.summarise([_report("official", 2.0, 400.0), dac])
    assert s["dacdr_epochs"] == {"source": 2, "target": 2, "meta": 1}
    md = bench.markdown(0.2, s)
    assert "dacdr: 2/2/1 epochs" in md and "checkpoint_every 5" in md
    assert "| dacdr, validation users (its selection) | 0.7000 / 0.9000 |" in md


@pytest.mark.slow
def test_grid_reports_validation_only(tmp_path):
    dataset = write_amazon_pair(tmp_path / "raw")
    lines = ['{"batch_size": 64, "epochs": 2}',
             '{"batch_size": 256, "epochs": 1, "schedule": {"meta": {"epochs": 3, "batch_size": 512}}}']
    rows = bench.grid(dataset, 0.5, 900, lines, tmp_path / "runs")
    assert [len(r["valid_mae_per_meta_epoch"]) for r in rows] == [2, 3]
    for r in rows:
        assert r["valid_mae_rmse"][0] == r["valid_mae_per_meta_epoch"][r["best_meta_epoch"] - 1] > 0
        assert not any("test" in k for k in r)
        assert not any((d / "results.json").exists() for d in (tmp_path / "runs").iterdir())  # no test scored


def test_folder_names_match_the_official_layout():
    assert [bench.folder_name(b) for b in (0.2, 0.5, 0.8)] == ["_8_2", "_5_5", "_2_8"]
    assert [bench.ratios_of(b) for b in (0.2, 0.5, 0.8)] == [(0.8, 0.2), (0.5, 0.5), (0.2, 0.8)]


def _run_bench(official: Path, dataset: Path, out: Path) -> dict:
    cmd = [sys.executable, str(BENCH / "ptupcdr_vs_official.py"), "--official", str(official), "--dataset",
           str(dataset), "--betas", "0.5", "--epochs", "2", "--rounds", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads((out / "summary.json").read_text())["summaries"]["0.5"]


@pytest.mark.slow
def test_end_to_end_on_a_stand_in_for_the_official_code(tmp_path):
    fake = tmp_path / "official"
    fake.mkdir()
    (fake / "run.py").write_text(FAKE_RUN)
    (fake / "models.py").write_text("")
    s = _run_bench(fake, write_amazon_pair(tmp_path / "raw"), tmp_path / "out")
    assert s["test_rows"]["official"] == s["test_rows"]["dacdr"] > 0  # the same test rows on both sides
    for st in s["stages"]:  # each stage trains on the same rows on both sides (the export is the split)
        assert st["rows"][0] == st["rows"][1] > 0, st
        assert st["official"] > 0 and st["dacdr"] > 0
    # the stand-in's PTUPCDR evaluations are its 7th and 8th: MAE 2.6 then 2.7; the best is kept
    assert s["mae_rmse"]["official (best test epoch)"][0] == pytest.approx(2.6)
    assert s["mae_rmse"]["official (last epoch)"][0] == pytest.approx(2.7)
    assert 0 < s["mae_rmse"]["dacdr (validation-selected)"][0] < 4
    assert s["memory_mib"]["peak"]["official"] > 0 and s["memory_mib"]["peak"]["dacdr"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not (OFFICIAL / "run.py").is_file(), reason=f"the official PTUPCDR code is not at {OFFICIAL}")
def test_end_to_end_on_the_official_code(tmp_path):
    for module in ("pandas", "tqdm", "matplotlib"):  # the official code's imports
        pytest.importorskip(module)
    s = _run_bench(OFFICIAL, write_amazon_pair(tmp_path / "raw"), tmp_path / "out")
    assert s["test_rows"]["official"] == s["test_rows"]["dacdr"] > 0
    for st in s["stages"]:
        assert st["rows"][0] == st["rows"][1] > 0, st
    best, last = s["mae_rmse"]["official (best test epoch)"], s["mae_rmse"]["official (last epoch)"]
    assert 0 < best[0] <= last[0]
