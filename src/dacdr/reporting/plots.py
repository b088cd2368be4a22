"""Matplotlib figures written next to the metrics: validation curves, attention weights, the benchmark tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless: figures go to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_validation_curves(histories: dict[str, list[list[dict[str, Any]]]], metric: str, path: Path) -> Path:
    """`histories[model]` = per seed, the trainer's history; one line per model, mean over seeds."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    key = f"valid_{metric}"
    for name, runs in histories.items():
        curves = [[h[key] for h in run if key in h] for run in runs]
        curves = [c for c in curves if c]
        if not curves:
            continue
        n = max(len(c) for c in curves)
        padded = np.array([c + [c[-1]] * (n - len(c)) for c in curves])  # stopped runs hold their last value
        ax.plot(np.arange(1, n + 1), padded.mean(0), marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(f"validation {metric.upper()}")
    ax.set_title("Validation curves (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_attention(
    labels: list[str],
    domain_weights: np.ndarray,
    item_weights: np.ndarray,
    highlight: np.ndarray,
    title: str,
    path: Path,
) -> Path:
    """Bars of the domain-level (alpha) and item-level weights over one user's source sequence."""
    x = np.arange(len(labels))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.28 * len(labels)), 6.5), sharex=True)
    colors = np.where(highlight, "tab:red", "tab:blue")
    axes[0].bar(x, domain_weights, color=colors)
    axes[0].set_ylabel("domain-level α")
    axes[1].bar(x, item_weights, color=colors)
    axes[1].set_ylabel("item-level weight")
    axes[1].set_xticks(x, labels, rotation=90, fontsize=7)
    axes[1].set_xlabel("source behaviours, oldest → newest (red: candidate's category)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_table2(metrics: dict[str, Any], path: Path, order: list[str]) -> Path:
    """Grouped bars: one group per target, one bar per model (in `order`, the paper's), error bars = std over
    seeds."""
    from dacdr.reporting.tables import ordered

    models = ordered(metrics["models"], order)
    targets = list(metrics["models"][models[0]])
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(models)), 4.8))
    cmap = plt.get_cmap("tab20")
    lows = []
    for j, name in enumerate(models):
        means = [metrics["models"][name][d]["auc"]["mean"] for d in targets]
        stds = [metrics["models"][name][d]["auc"]["std"] for d in targets]
        lows += means
        x = np.arange(len(targets)) - 0.4 + width * (j + 0.5)
        ax.bar(x, means, width, yerr=stds, label=name, color=cmap(j % 20), capsize=2)
    for i, d in enumerate(targets):
        if "oracle" in metrics:
            ax.hlines(metrics["oracle"][d]["auc"], i - 0.42, i + 0.42, colors="black", linestyles="--",
                      label="oracle (true p)" if i == 0 else None)
        if "oracle_transferable" in metrics:
            ax.hlines(metrics["oracle_transferable"][d]["auc"], i - 0.42, i + 0.42, colors="grey", linestyles=":",
                      label="transferable oracle" if i == 0 else None)
    finite = [v for v in lows if not math.isnan(v)]
    if finite:
        top = max(finite + [metrics["oracle"][d]["auc"] for d in targets] if "oracle" in metrics else finite)
        ax.set_ylim(max(0.0, min(finite) - 0.02), top + 0.01)
    ax.set_xticks(np.arange(len(targets)), targets)
    ax.set_ylabel("cold-start AUC (mean ± std over seeds)")
    ax.set_title(f"Table 2 on the synthetic {metrics['dataset'].get('preset', '')} world, "
                 f"{len(metrics['seeds'])} seed(s)")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_scenarios(metrics: dict[str, Any], path: Path) -> Path:
    """`dacdr experiment`: grouped bars of the headline metric (RMSE for P2, NDCG@10 for P3) per scenario and
    model."""
    from dacdr.reporting.summary import METRIC_LABELS

    key = "ndcg@10" if metrics["task"] == "ranking" else "rmse"
    scenarios = metrics["scenarios"]
    models = list(next(iter(scenarios.values()))["models"])
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(scenarios) * max(1, len(models)) / 3), 4.2))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(scenarios))
    for j, name in enumerate(models):
        means, stds = [], []
        for s in scenarios.values():
            per_domain = list(s["models"].get(name, {}).values())
            means.append(np.nanmean([m[key]["mean"] for m in per_domain]) if per_domain else np.nan)
            stds.append(np.nanmean([m[key]["std"] for m in per_domain]) if per_domain else np.nan)
        ax.bar(x + (j - (len(models) - 1) / 2) * width, means, width, yerr=stds, label=name, capsize=2)
    ax.set_xticks(x, list(scenarios))
    ax.set_ylabel(f"{METRIC_LABELS[key]} (cold-start users; mean ± std over seeds)")
    ax.set_title(f"{metrics['experiment']} ({metrics['protocol']})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
