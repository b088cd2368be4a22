"""Aggregating per-seed results into the `metrics.json` schema and markdown tables."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

METRIC_LABELS = {"auc": "AUC", "gauc": "gAUC", "logloss": "LogLoss", "mae": "MAE", "rmse": "RMSE", "mrr": "MRR",
                 "ndcg@5": "NDCG@5", "ndcg@10": "NDCG@10", "hr@1": "HR@1", "hr@5": "HR@5", "hr@10": "HR@10"}
LOWER_IS_BETTER = {"logloss", "mae", "rmse"}
# Reference rows of a synthetic world, in the order they are printed (dacdr.evaluation.REFERENCES).
REFERENCE_KEYS = ("oracle", "oracle_transferable", "plugin")  # the keys of dacdr.evaluation.REFERENCES
REFERENCE_LABELS = {"oracle": "Oracle (true p)", "oracle_transferable": "Oracle, transferable (source-revealed p)",
                    "plugin": "Plug-in (topic histogram + appeal)"}


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
    for key in REFERENCE_KEYS:  # the same for every run of one dataset: taken from the first
        if key in first:
            out[key] = {d: {m: first[key]["cold"][d][m] for m in metric_keys} for d in first[key]["cold"]}
            out[f"{key}_all_users"] = {d: {m: first[key]["all"][d][m] for m in metric_keys}
                                       for d in first[key]["all"]}
    out["models"] = {name: _aggregate_scope(runs, "cold", metric_keys) for name, runs in results.items()}
    out["models_all_users"] = {name: _aggregate_scope(runs, "all", metric_keys) for name, runs in results.items()}
    return out


def _cell(stat: dict[str, float]) -> str:
    if math.isnan(stat["mean"]):
        return "n/a"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def markdown_tables(metrics: dict[str, Any], scope: str = "models") -> str:
    """One table per target domain: the reference rows first (oracle, transferable oracle, plug-in, where the
    data has them), then each model with its AUC gap to the oracle and to the transferable oracle."""
    task = metrics["task"]
    keys = ["auc", "gauc", "logloss"] if task == "ctr" else ["mae", "rmse"]
    suffix = "" if scope == "models" else "_all_users"
    refs = {k: metrics[k + suffix] for k in REFERENCE_KEYS if k + suffix in metrics}
    gaps = [k for k in ("oracle", "oracle_transferable") if k in refs]
    models = metrics[scope]
    domains = list(next(iter(models.values())))
    lines: list[str] = []
    for d in domains:
        header = ["model", *(METRIC_LABELS[k] for k in keys)]
        header += [{"oracle": "AUC gap to oracle", "oracle_transferable": "AUC gap to transferable"}[g] for g in gaps]
        lines += [f"### {d}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for key, ref in refs.items():
            if d in ref:
                lines.append(f"| {REFERENCE_LABELS[key]} | " + " | ".join(f"{ref[d][k]:.4f}" for k in keys)
                             + " | —" * len(gaps) + " |")
        for name, per_domain in models.items():
            row = [name, *(_cell(per_domain[d][k]) for k in keys)]
            row += [f"{per_domain[d]['auc']['mean'] - refs[g][d]['auc']:+.4f}" for g in gaps]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)
