"""The benchmark tables: the paper's Table 2 (`dacdr bench`) and Table 3 (`dacdr experiment`), with the
paired tests, as markdown and CSV."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dacdr.reporting.summary import METRIC_LABELS, REFERENCE_KEYS, REFERENCE_LABELS


def ordered(models: Iterable[str], order: list[str]) -> list[str]:
    """`models` in `order`, then those `order` does not list, as they came."""
    models = list(models)
    return [m for m in order if m in models] + [m for m in models if m not in order]


def _fmt(stat: dict[str, float]) -> str:
    return "n/a" if math.isnan(stat["mean"]) else f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def table2_markdown(metrics: dict[str, Any], order: list[str]) -> str:
    """Rows: the reference scores, then models in `order` (the paper's; others after it); columns: targets;
    cells: cold-start AUC mean ± std."""
    models = metrics["models"]
    targets = list(next(iter(models.values())))
    lines = ["| model | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for key in REFERENCE_KEYS:
        if key in metrics:
            lines.append(f"| {REFERENCE_LABELS[key]} | " + " | ".join(f"{metrics[key][d]['auc']:.4f}" for d in targets)
                         + " |")
    for name in ordered(models, order):
        lines.append(f"| {name} | " + " | ".join(_fmt(models[name][d]["auc"]) for d in targets) + " |")
    return "\n".join(lines) + "\n"


def tests_markdown(tests: dict[str, Any]) -> str:
    if not tests:
        return "No paired test (DACDR or the baselines are missing).\n"
    lines = ["| target | best baseline | DACDR − baseline AUC (mean ± std over seeds) | t | p-value | seeds |",
             "|---|---|---|---|---|---|"]
    for d, t in tests.items():
        p = "n/a" if math.isnan(t["p_value"]) else f"{t['p_value']:.3g}"
        tt = "n/a" if math.isnan(t["t"]) else f"{t['t']:.2f}"
        lines.append(f"| {d} | {t['best_baseline']} | {t['mean_diff']:+.4f} ± {t['std_diff']:.4f} | {tt} | {p} "
                     f"| {t['n_seeds']} |")
    return "\n".join(lines) + "\n"


def ablation_markdown(tests: dict[str, Any]) -> str:
    if not tests:
        return "No ablation test (DACDR or its ablations are missing).\n"
    targets = list(next(iter(tests.values()))["targets"])
    lines = ["| DACDR − | " + " | ".join(targets) + " | mean of targets | p-value (mean) |",
             "|---|" + "---|" * (len(targets) + 2)]
    for name, t in tests.items():
        cells = [f"{t['targets'][d]['mean_diff']:+.4f} ± {t['targets'][d]['std_diff']:.4f}" for d in targets]
        m = t["mean_of_targets"]
        p = "n/a" if math.isnan(m["p_value"]) else f"{m['p_value']:.3g}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['mean_diff']:+.4f} ± {m['std_diff']:.4f} | {p} |")
    return "\n".join(lines) + "\n"


def table2_csv(metrics: dict[str, Any], path: Path) -> Path:
    """One row per (model, target, users) with AUC / gAUC / LogLoss mean and std over seeds."""
    keys = ["auc", "gauc", "logloss"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "target", "users", *(f"{k}_{s}" for k in keys for s in ("mean", "std")), "seeds"])
        n = len(metrics["seeds"])
        for scope, suffix, users in (("models", "", "cold"), ("models_all_users", "_all_users", "all")):
            for key in REFERENCE_KEYS:
                for d, m in metrics.get(key + suffix, {}).items():
                    w.writerow([REFERENCE_LABELS[key], d, users, *(v for k in keys for v in (m[k], 0.0)), 1])
            for name, per_domain in metrics[scope].items():
                for d, m in per_domain.items():
                    w.writerow([name, d, users, *(m[k][s] for k in keys for s in ("mean", "std")), n])
    return path


def table3_markdown(metrics: dict[str, Any]) -> str:
    """Table 3 layout: one row per model; for P2 the columns are MAE / RMSE per beta, for P3 the ranking
    metrics. One table per target domain; cells are mean ± std over the seeds."""
    keys = metrics["metric_keys"]
    scenarios = metrics["scenarios"]
    first = next(iter(scenarios.values()))
    domains = list(next(iter(first["models"].values()), {}))
    seeds = ", ".join(map(str, metrics["seeds"]))
    lines = [f"## {metrics['experiment']}: {metrics['protocol']}, cold-start users, mean ± std over "
             f"{len(metrics['seeds'])} seed(s) ({seeds})", ""]
    if metrics.get("quick"):
        lines += ["*Quick run: a smoke test, not a result.*", ""]
    for d in domains:
        header = ["model"] + [f"{METRIC_LABELS[k]} ({s})" if len(scenarios) > 1 else METRIC_LABELS[k]
                              for s in scenarios for k in keys]
        lines += [f"### {metrics['dataset']['source']} → {d}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for name in first["models"]:
            cells = [_fmt(scenarios[s]["models"][name][d][k]) if d in scenarios[s]["models"].get(name, {}) else "n/a"
                     for s in scenarios for k in keys]
            lines.append("| " + " | ".join([name, *cells]) + " |")
        lines.append("")
    if metrics.get("models_skipped"):
        lines += [f"Not registered in this build, skipped: {', '.join(metrics['models_skipped'])}.", ""]
    return "\n".join(lines)
