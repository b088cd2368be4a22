"""Scoring a split and computing its metrics per target domain, for cold-start and for all users."""

from __future__ import annotations

import numpy as np
import torch

from dacdr import metrics
from dacdr.data.batches import BatchGatherer
from dacdr.data.samples import PreparedData
from dacdr.models import RecModel


@torch.no_grad()
def predict(model: RecModel, gatherer: BatchGatherer, indices: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Predictions (click probabilities or clamped ratings) for the samples `indices`, in order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model.predict(model.score(b if device.type == "cpu" else {k: v.to(device) for k, v in b.items()}))
           .float().cpu().numpy() for b in gatherer.iterate(indices, batch_size)]
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def score_metrics(task: str, labels: np.ndarray, preds: np.ndarray, users: np.ndarray) -> dict[str, float]:
    if task == "ctr":
        return metrics.ctr_metrics(labels, preds, users)
    return metrics.rating_metrics(labels, preds)


def per_domain_metrics(
    prepared: PreparedData, indices: np.ndarray, preds: np.ndarray
) -> dict[str, dict[str, float]]:
    """Metrics of `preds` (aligned with `indices`) for each target domain present."""
    s, spec = prepared.samples, prepared.spec
    out: dict[str, dict[str, float]] = {}
    dom = s["domain"][indices]
    for name in spec.target_domains:
        sel = dom == prepared.vocabs["domain"].lookup(name)
        if sel.any():
            idx = indices[sel]
            out[name] = score_metrics(spec.task, s["label"][idx], preds[sel], s["user"][idx])
    return out


def test_report(prepared: PreparedData, preds: np.ndarray) -> dict[str, dict[str, dict[str, float]]]:
    """`{"cold": {domain: metrics}, "all": {domain: metrics}}` on the test split; `preds` aligned with it."""
    split = prepared.split
    return {
        "cold": per_domain_metrics(prepared, split.test[split.test_cold], preds[split.test_cold]),
        "all": per_domain_metrics(prepared, split.test, preds),
    }


# Reference scores of a synthetic world, by the key they are reported under (docs/synthetic.md).
REFERENCES = {"oracle": "p_true", "oracle_transferable": "p_transferable", "plugin": "p_plugin"}


def oracle_report(
    prepared: PreparedData, column: str = "p_true"
) -> dict[str, dict[str, dict[str, float]]] | None:
    """The same report for a reference probability column (synthetic data): by default the true click
    probability, the ceiling; None when the column is absent or incomplete on the test split."""
    p = prepared.samples.get(column)
    if p is None or prepared.spec.task != "ctr":
        return None
    test_p = p[prepared.split.test]
    if np.isnan(test_p).any():
        return None
    return test_report(prepared, test_p)


def reference_reports(prepared: PreparedData) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Every reference the data carries: `oracle` (true p), `oracle_transferable` (the ceiling reachable from
    the source domain) and `plugin` (the zero-parameter histogram plug-in)."""
    reports = {key: oracle_report(prepared, column) for key, column in REFERENCES.items()}
    return {key: r for key, r in reports.items() if r is not None}
