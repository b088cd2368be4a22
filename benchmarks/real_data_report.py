"""Per-seed numbers of `dacdr experiment` runs on the real datasets, and the tables built from them.

The numbers behind docs/results.md ("Real datasets"). `--collect` reads finished runs from experiment output
directories (each run directory's own result, so an experiment stopped part-way still counts its finished
runs) and writes one JSON line per (dataset, scenario, model, seed); `--report` prints mean ± std tables and
paired differences (over seeds, `scipy.stats.ttest_rel`) between two models.

    python benchmarks/real_data_report.py --collect runs/experiments/movielens-1m ... --out runs.jsonl
    python benchmarks/real_data_report.py --report runs.jsonl --pair "DACDR:DACDR w/o DA&IA"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dacdr.recipes.experiment import RANKING_KEYS, RATING_KEYS
from dacdr.reporting.significance import paired_test

# Lower is better for the rating errors, higher for every ranking metric.
LOWER_IS_BETTER = {"mae", "rmse"}


def collect(experiment_dirs: list[Path], version: str) -> list[dict[str, Any]]:
    """One record per finished run under each experiment directory (`runs/<scenario>/<model>-seed<s>/`)."""
    records = []
    for exp in experiment_dirs:
        cfg = yaml.safe_load((exp / "experiment.yaml").read_text())
        ranking = cfg.get("ranking") is not None
        for run_dir in sorted((exp / "runs").glob("*/*")):
            result = run_dir / ("ranking.json" if ranking else "results.json")
            if not result.exists():
                continue  # not finished
            run_cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
            name, seed = run_cfg["model"]["name"], run_cfg["train"]["seed"]
            test = json.loads(result.read_text())
            cold = test["cold"] if ranking else test["test"]["cold"]
            history = json.loads((run_dir / "history.json").read_text())
            scenario = "published split" if ranking else f"beta={round(run_cfg['data']['cold_start_share'] * 100)}%"
            records.append({
                "dataset": cfg["name"], "scenario": scenario, "task": "ranking" if ranking else "rating",
                "model": name, "seed": seed, "dacdr_model_version": version,
                "test_cold": cold, "epochs": len(history),
                "valid_scores": [h.get("valid_score") for h in history],
                # the trainer's per-epoch seconds from the run's own history, so a resumed experiment (which
                # skips finished runs) does not overwrite a run's time with the time of skipping it
                "train_seconds": round(sum(h.get("seconds", 0.0) for h in history), 1),
            })
    return records


def closed_form_popularity(experiment_dirs: list[Path], version: str) -> list[dict[str, Any]]:
    """Untrained references on each experiment's exact splits: for ratings the item's mean training rating
    (the global mean for an unseen item), and that plus the user's rating offset read from her source window;
    for ranking the item's count of positive training rows, scored against the experiment's own candidates.
    Nothing is learnt by gradient; the offset's one shrinkage constant is chosen on the validation rows."""
    from dacdr.metrics import rank_of_positive, ranking_metrics
    from dacdr.ranking import RANKING_KS, sample_candidates
    from dacdr.recipes.experiment import ExperimentConfig, _prepare, ensure_converted

    records = []
    for exp in experiment_dirs:
        cfg = ExperimentConfig.model_validate(yaml.safe_load((exp / "experiment.yaml").read_text()))
        data_path = ensure_converted(cfg)
        cutoff = "all" if cfg.split.mode == "ptupcdr" else "before"
        betas: list[float | None] = [None] if cfg.split.protocol == "periods" else list(cfg.split.betas)
        for beta in betas:
            for seed in cfg.split.seeds:
                prep = _prepare(data_path, cfg, beta, seed, cutoff)
                s, split = prep.samples, prep.split
                n_items = len(prep.item_table)
                train = split.train_target
                (target,) = prep.spec.target_domains
                if cfg.is_ranking:
                    assert cfg.ranking is not None
                    pos_train = train[s["label"][train] > 0]
                    count = np.bincount(s["item"][pos_train], minlength=n_items).astype(float)
                    test = split.test[s["label"][split.test] > 0]
                    cands = sample_candidates(prep, test, cfg.ranking.negatives, cfg.ranking.seed)
                    ranks = rank_of_positive(count[s["item"][test]], count[cands])
                    records.append(_record(cfg, "published split", "item popularity (closed form)", seed, version,
                                           {target: ranking_metrics(ranks, RANKING_KS)}))
                else:
                    scenario = f"beta={round(beta * 100)}%"
                    mean = _item_mean(s["item"][train], s["label"][train].astype(float), n_items)
                    test = split.test[split.test_cold]
                    records.append(_record(cfg, scenario, "item mean (closed form)", seed, version,
                                           {target: _errors(mean[s["item"][test]], s["label"][test])}))
                    # The user's rating offset, read from her source sequence (the same window the models
                    # see): mean over it of (rating - the source item's mean rating), shrunk by k / (n + k)
                    # towards 0; k chosen on the validation rows.
                    vocab = prep.vocabs.vocabs["rating"]
                    value = np.full(max(vocab.index.values()) + 1, np.nan)
                    for raw, idx in vocab.index.items():
                        value[idx] = float(raw)
                    ev_item, ev_rating = prep.events["item"], value[prep.events["rating"]]
                    dev = ev_rating - _item_mean(ev_item, ev_rating, n_items)[ev_item]
                    csum = np.r_[0.0, np.cumsum(dev)]
                    grid = [0.5, 1, 2, 5, 10, 20, 50]
                    k = min(grid, key=lambda k: _errors(_offset_predict(s, split.valid, mean, csum, k),
                                                        s["label"][split.valid])["rmse"])
                    rec = _record(cfg, scenario, "item mean + source offset (closed form)", seed, version,
                                  {target: _errors(_offset_predict(s, test, mean, csum, k), s["label"][test])})
                    rec["shrinkage_k"] = k
                    records.append(rec)
    return records


def _item_mean(items: np.ndarray, labels: np.ndarray, n_items: int) -> np.ndarray:
    """Each item's mean label; the global mean for an item without rows."""
    total = np.bincount(items, weights=labels, minlength=n_items)
    n = np.bincount(items, minlength=n_items)
    return np.where(n > 0, total / np.maximum(n, 1), labels.mean())


def _offset_predict(s: dict[str, np.ndarray], rows: np.ndarray, mean: np.ndarray, csum: np.ndarray,
                    k: float) -> np.ndarray:
    """Item mean plus the shrunk mean deviation over each row's source window (`csum`: cumulative deviations)."""
    lo, hi = s["seq_start"][rows], s["seq_end"][rows]
    return mean[s["item"][rows]] + (csum[hi] - csum[lo]) / (hi - lo + k)


def _errors(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    err = pred - label.astype(float)
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())), "n": len(err)}


def _record(cfg: Any, scenario: str, name: str, seed: int, version: str, cold: dict[str, Any]) -> dict[str, Any]:
    return {"dataset": cfg.name, "scenario": scenario, "task": "ranking" if cfg.is_ranking else "rating",
            "model": name, "seed": seed, "dacdr_model_version": version, "test_cold": cold, "epochs": 0,
            "valid_scores": [], "train_seconds": None}


def _per_seed(records: list[dict[str, Any]], model: str, key: str) -> dict[int, float]:
    out = {}
    for r in records:
        if r["model"] == model:
            (domain,) = r["test_cold"].values()  # one target domain per experiment
            out[r["seed"]] = domain[key]
    return out


ORDER = ["Pop", "item mean (closed form)", "item popularity (closed form)",
         "item mean + source offset (closed form)", "DACDR", "DACDR w/o DA",
         "DACDR w/o IA", "DACDR w/o DA&IA", "DACDR (paper)", "DNN-multi"]


def report(records: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> str:
    """Per dataset: one mean ± std table (a column per metric and scenario), then the paired differences."""
    lines = []
    datasets: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        datasets.setdefault(r["dataset"], []).append(r)
    for dataset, rs in datasets.items():
        keys = RANKING_KEYS if rs[0]["task"] == "ranking" else RATING_KEYS
        scenarios = list(dict.fromkeys(r["scenario"] for r in rs))
        by_scen = {sc: [r for r in rs if r["scenario"] == sc] for sc in scenarios}
        cols = [(sc, k) for sc in scenarios for k in keys]
        label = (lambda sc, k: f"{k} ({sc})") if len(scenarios) > 1 else (lambda sc, k: k)
        names = list(dict.fromkeys(r["model"] for r in rs))
        names = [m for m in ORDER if m in names] + [m for m in names if m not in ORDER]
        lines += [f"### {dataset}", "", "| model | seeds | " + " | ".join(label(*c) for c in cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for model in names:
            cells, n = [], 0
            for sc, k in cols:
                v = np.array(list(_per_seed(by_scen[sc], model, k).values()))
                n = max(n, len(v))
                cells.append("—" if not len(v) else f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}")
            lines.append(f"| {model} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
        rows = []
        for a, b in pairs:
            for sc in scenarios:
                cells, n = [], 0
                for k in keys:
                    sa, sb = _per_seed(by_scen[sc], a, k), _per_seed(by_scen[sc], b, k)
                    common = sorted(set(sa) & set(sb))
                    if len(common) < 2:
                        break
                    t = paired_test([sa[s] for s in common], [sb[s] for s in common])
                    n = len(common)
                    cells.append(f"{t['mean_diff']:+.4f} ± {t['std_diff']:.4f} (p {t['p_value']:.2g})")
                if cells:
                    where = f" ({sc})" if len(scenarios) > 1 else ""
                    rows.append(f"| {a} − {b}{where} | {n} | " + " | ".join(cells) + " |")
        if rows:
            better = ", ".join(f"{k} {'lower' if k in LOWER_IS_BETTER else 'higher'}" for k in keys)
            lines += [f"Paired differences over seeds (mean ± std, paired t-test p; better: {better}):", "",
                      "| pair | seeds | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys), *rows, ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collect", nargs="+", type=Path, help="experiment output directories")
    ap.add_argument("--out", type=Path, help="JSONL written by --collect")
    ap.add_argument("--closed-form", action="store_true",
                    help="with --collect: add the untrained popularity reference (item mean / count)")
    ap.add_argument("--version", default="0.2", help="the DACDR-family version these runs used")
    ap.add_argument("--report", type=Path, help="JSONL to tabulate")
    ap.add_argument("--pair", action="append", default=[], help="'A:B': paired difference A − B per metric")
    args = ap.parse_args()
    if args.collect:
        if args.out is None:
            ap.error("--collect needs --out")
        records = collect(args.collect, args.version)
        if args.closed_form:
            records += closed_form_popularity(args.collect, args.version)
        args.out.write_text("".join(json.dumps(r) + "\n" for r in records))
        print(f"wrote {len(records)} runs to {args.out}")
    if args.report:
        records = [json.loads(line) for line in args.report.read_text().splitlines() if line.strip()]
        print(report(records, [tuple(p.split(":", 1)) for p in args.pair]))


if __name__ == "__main__":
    main()
