"""Matplotlib figures written next to the metrics: validation curves and attention weights."""

from __future__ import annotations

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
