"""Where DACDR's attention goes: its mass on the behaviours that matter, against their share of the history.

On a synthetic world with the mechanism on (docs/synthetic.md), the behaviours that matter are known: for the
domain-level step, those in the target's focus categories; for the item-level step, those of the candidate's
category. A step that selects puts more weight on them than their share of the valid positions; a uniform
step puts exactly their share.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dacdr.data.batches import BatchGatherer
from dacdr.data.features import FIRST_ID
from dacdr.data.samples import PreparedData
from dacdr.data.synthetic import focus_categories
from dacdr.models.base import RecModel
from dacdr.reporting.plots import plot_attention


@torch.no_grad()
def relevance_mass(
    model: RecModel, prepared: PreparedData, data_dir: str | Path, indices: np.ndarray, batch_size: int = 4096
) -> dict[str, dict[str, float]]:
    """Per target domain, over the samples `indices` with a non-empty history:

    - `domain_mass` / `domain_share`: step 1's allocation alpha on behaviours of the target's focus
      categories, and those behaviours' share of the history (mean over samples);
    - `item_mass` / `item_share`: step 2's weights (mean over heads and candidate tokens) on behaviours of the
      candidate's category, and their share;
    - `n`: samples counted.
    """
    if not hasattr(model, "attend"):
        raise ValueError(f"{type(model).__name__} has no attention to analyse")
    spec = prepared.spec
    cat_seq = spec.sequence_fields.index("category")
    cat_item = spec.item_fields.index("category")
    cat_vocab = prepared.vocabs["category"]
    focus = {d: torch.tensor([cat_vocab.lookup(c) for c in cats]) for d, cats in focus_categories(data_dir).items()}
    domain_of = {prepared.vocabs["domain"].lookup(d): d for d in spec.target_domains}
    sums: dict[str, np.ndarray] = {d: np.zeros(5) for d in spec.target_domains}
    was_training = model.training
    model.eval()
    for batch in BatchGatherer(prepared).iterate(indices, batch_size):
        parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
        mask = batch["seq_mask"].float()
        keep = mask.sum(1) > 0
        seq_cat = batch["seq"][..., cat_seq]
        item_w = parts["A_i"].mean(dim=(1, 2))  # [B, L]
        same = (seq_cat == batch["item"][:, cat_item : cat_item + 1]).float() * mask
        dom = batch["domain"][:, 0]
        for code, name in domain_of.items():
            sel = keep & (dom == code)
            if not sel.any():
                continue
            rel = torch.isin(seq_cat[sel], focus[name]).float() * mask[sel]
            n_valid = mask[sel].sum(1)
            sums[name] += np.array([
                float((parts["alpha"][sel] * rel).sum()), float((rel.sum(1) / n_valid).sum()),
                float((item_w[sel] * same[sel]).sum()), float((same[sel].sum(1) / n_valid).sum()), float(sel.sum()),
            ])
    model.train(was_training)
    out = {}
    for name, (dm, ds, im, is_, n) in sums.items():
        if n:
            out[name] = {"domain_mass": dm / n, "domain_share": ds / n, "item_mass": im / n, "item_share": is_ / n,
                         "n": int(n)}
    return out


def _names(prepared: PreparedData, field: str, ids: np.ndarray) -> list[str]:
    values = prepared.vocabs[field].values
    return [values[i - FIRST_ID] if i >= FIRST_ID else "?" for i in ids]


def attention_figure(model: RecModel, prepared: PreparedData, path: Path) -> Path | None:
    """Both attention steps of DACDR (`model`) for one cold-start test impression with a full source history."""
    split, s = prepared.split, prepared.samples
    cold = split.test[split.test_cold]
    seq_len = s["seq_end"][cold] - s["seq_start"][cold]
    clicked = s["label"][cold] > 0
    order = np.lexsort((-seq_len, ~clicked))  # a click with the longest history first
    if len(order) == 0:
        return None
    sample = cold[order[:1]]
    batch = BatchGatherer(prepared).gather(sample)
    with torch.no_grad():
        parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
    mask = batch["seq_mask"][0].numpy()
    alpha = parts["alpha"][0].numpy()[mask]
    item_w = parts["A_i"][0].mean(dim=(0, 1)).numpy()[mask]
    fields = prepared.spec.sequence_fields
    seq = batch["seq"][0].numpy()[mask]
    cat_j = fields.index("category") if "category" in fields else 0
    cats = _names(prepared, fields[cat_j], seq[:, cat_j])
    behaviours = _names(prepared, "behaviour", seq[:, fields.index("behaviour")])
    cand_cat = _names(prepared, prepared.spec.item_fields[min(1, len(prepared.spec.item_fields) - 1)],
                      batch["item"][0, 1:2].numpy())[0]
    domain = _names(prepared, "domain", s["domain"][sample])[0]
    title = (f"user {_names(prepared, 'user', s['user'][sample])[0]} (cold-start in {domain}); "
             f"candidate category {cand_cat}, label {int(s['label'][sample][0])}")
    labels = [f"{c}·{b[:2]}" for c, b in zip(cats, behaviours, strict=True)]
    return plot_attention(labels, alpha, item_w, np.array(cats) == cand_cat, title, path)
