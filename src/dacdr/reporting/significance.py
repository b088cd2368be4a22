"""Paired tests across seeds: is DACDR's edge over a baseline or an ablation more than seed noise?"""

from __future__ import annotations

from typing import Any

import numpy as np


def paired_test(a: list[float], b: list[float]) -> dict[str, float]:
    """Paired t-test of `a` against `b` across seeds (scipy.stats.ttest_rel); NaN p-value under 2 seeds."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    out = {"mean_diff": float(diff.mean()), "std_diff": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0,
           "t": float("nan"), "p_value": float("nan"), "n_seeds": len(diff)}
    if len(diff) > 1 and np.ptp(diff) > 0:
        from scipy.stats import ttest_rel

        res = ttest_rel(a, b)
        out |= {"t": float(res.statistic), "p_value": float(res.pvalue)}
    return out


def paired_tests(
    per_seed_auc: dict[str, dict[str, list[float]]], targets: list[str], baselines: list[str]
) -> dict[str, Any]:
    """Per target: DACDR against the one of `baselines` with the best mean cold-start AUC."""
    tests: dict[str, Any] = {}
    baselines = [m for m in baselines if m in per_seed_auc]
    if "DACDR" not in per_seed_auc or not baselines:
        return tests
    for d in targets:
        best = max(baselines, key=lambda m: float(np.mean(per_seed_auc[m][d])))
        tests[d] = {"dacdr": "DACDR", "best_baseline": best,
                    **paired_test(per_seed_auc["DACDR"][d], per_seed_auc[best][d])}
    return tests


def ablation_tests(
    per_seed_auc: dict[str, dict[str, list[float]]], targets: list[str], ablations: list[str]
) -> dict[str, Any]:
    """DACDR against each of its `ablations`, per target and on the mean of the targets (paired across seeds)."""
    if "DACDR" not in per_seed_auc:
        return {}
    tests: dict[str, Any] = {}
    mean = {m: list(np.mean([per_seed_auc[m][d] for d in targets], axis=0)) for m in per_seed_auc}
    for ablation in [m for m in ablations if m in per_seed_auc]:
        per = {d: paired_test(per_seed_auc["DACDR"][d], per_seed_auc[ablation][d]) for d in targets}
        tests[ablation] = {"targets": per, "mean_of_targets": paired_test(mean["DACDR"], mean[ablation])}
    return tests
