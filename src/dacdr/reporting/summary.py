"""Aggregating per-seed results into the `metrics.json` schema and markdown tables."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

METRIC_LABELS = {"auc": "AUC", "gauc": "gAUC", "logloss": "LogLoss", "mae": "MAE", "rmse": "RMSE"}
LOWER_IS_BETTER = {"logloss", "mae", "rmse"}


def mean_std(values: list[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}


def _aggregate_scope(runs: list[dict[str, Any]], scope: str, metric_keys: list[str]) -> dict[str, Any]:
    domains = list(runs[0]["test"][scope])
    return {
        d: {m: mean_std([r["test"][scope].get(d, {}).get(m, float("nan")) for r in runs]) for m in metric_keys}
        for d in domains
    }


def build_metrics(
    task: str,
    dataset: dict[str, Any],
    seeds: list[int],
    results: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """`results[model]` = one `Trainer.evaluate()` dict per seed -> the documented metrics.json layout.

    `models` holds the cold-start figures (the headline); `models_all_users` the same over all test users.
    """
    metric_keys = ["auc", "gauc", "logloss"] if task == "ctr" else ["mae", "rmse"]
    out: dict[str, Any] = {"task": task, "dataset": dataset, "seeds": list(seeds)}
    first = next(iter(results.values()))[0]
    if "oracle" in first:
        out["oracle"] = {
            d: {m: first["oracle"]["cold"][d][m] for m in metric_keys} for d in first["oracle"]["cold"]
        }
        out["oracle_all_users"] = {
            d: {m: first["oracle"]["all"][d][m] for m in metric_keys} for d in first["oracle"]["all"]
        }
    out["models"] = {name: _aggregate_scope(runs, "cold", metric_keys) for name, runs in results.items()}
    out["models_all_users"] = {name: _aggregate_scope(runs, "all", metric_keys) for name, runs in results.items()}
    return out


def _cell(stat: dict[str, float]) -> str:
    if math.isnan(stat["mean"]):
        return "n/a"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def markdown_tables(metrics: dict[str, Any], scope: str = "models") -> str:
    """One table per target domain: oracle first, then each model with its AUC gap to the oracle."""
    task = metrics["task"]
    keys = ["auc", "gauc", "logloss"] if task == "ctr" else ["mae", "rmse"]
    oracle = metrics.get("oracle" if scope == "models" else "oracle_all_users")
    models = metrics[scope]
    domains = list(next(iter(models.values())))
    lines: list[str] = []
    for d in domains:
        header = ["model", *(METRIC_LABELS[k] for k in keys)]
        if oracle:
            header.append("AUC gap to oracle")
        lines += [f"### {d}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        if oracle:
            lines.append("| Oracle (true p) | " + " | ".join(f"{oracle[d][k]:.4f}" for k in keys) + " | — |")
        for name, per_domain in models.items():
            row = [name, *(_cell(per_domain[d][k]) for k in keys)]
            if oracle:
                row.append(f"{per_domain[d]['auc']['mean'] - oracle[d]['auc']:+.4f}")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)
