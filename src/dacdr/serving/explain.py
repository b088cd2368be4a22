"""Attention-weight explanations: which source behaviours a DACDR score leaned on.

The item-level weights (`A_i`, per head and per candidate token) are averaged over heads and candidate tokens
into one distribution over the history for each candidate; the domain-level allocation (`alpha`, the mean of
the step-1 weights) is one distribution for the request. Only learnt steps are reported: an ablation's fixed
allocation (DACDR w/o DA, w/o IA) leaves its level empty, and a model with neither is refused. Both come
from the packaged PyTorch model, whatever the serving engine (the ONNX graph returns scores only); the
weights are those the score was computed with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dacdr.data.batches import as_batch, assemble, pack_histories
from dacdr.data.features import FIRST_ID
from dacdr.serving.scoring import RequestError, Resolved, Scorer

TOP_BEHAVIOURS = 5


def _learnt_steps(scorer: Scorer) -> tuple[bool, bool]:
    """(domain level, item level): which attention steps of the model have learnt weights. An ablated step
    returns a fixed allocation (uniform, or step 1's), which explains nothing about the user."""
    model = scorer.pkg.model
    if not hasattr(model, "attend"):
        return False, False
    return bool(getattr(model, "use_da", False)), bool(getattr(model, "use_ia", False))


def can_explain(scorer: Scorer) -> bool:
    return any(_learnt_steps(scorer))


def refuse_unless_explainable(scorer: Scorer, where: str = "") -> None:
    if not can_explain(scorer):
        name = scorer.pkg.description.get("name", type(scorer.pkg.model).__name__)
        raise RequestError(f"{where}explain", f"model {name!r} has no attention weights to explain; "
                                              "explanations need DACDR or an ablation with an attention step")


def _behaviour(scorer: Scorer, r: Resolved, pos: int, weight: float) -> dict[str, Any]:
    tokens = r.tokens[pos]
    fields = scorer.spec.sequence_fields
    item_idx = int(tokens[fields.index("item")])
    if r.raw_items is not None:
        item: str | int = r.raw_items[pos]
    else:
        item = scorer.item_vocab.values[item_idx - FIRST_ID] if item_idx >= FIRST_ID else None
    beh_idx = int(tokens[fields.index("behaviour")])
    behaviour = scorer.behaviour_vocab.values[beh_idx - FIRST_ID] if beh_idx >= FIRST_ID else None
    return {"item": item, "behaviour": behaviour, "position": pos, "weight": round(float(weight), 6)}


def _top(scorer: Scorer, r: Resolved, weights: np.ndarray, top: int) -> list[dict[str, Any]]:
    order = np.argsort(-weights, kind="stable")[:top]
    return [_behaviour(scorer, r, int(p), weights[p]) for p in order if weights[p] > 0]


def explain(scorer: Scorer, r: Resolved, domain_row: int, item_idx: np.ndarray,
            top: int = TOP_BEHAVIOURS) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """(domain-level top behaviours, per candidate: item-level top behaviours); positions index the history
    as used (oldest first, the last `max_len`)."""
    if len(r.tokens) == 0:  # nothing to attend to: the model's weights are all zero
        return [], [[] for _ in item_idx]
    model = scorer.pkg.model
    # The whole history, unpadded, once for all candidates: attention positions are history positions.
    events, start, end = pack_histories([r.tokens], scorer.n_fields)
    batch = as_batch(assemble(events, start, end, len(r.tokens), item=scorer.pkg.item_table[item_idx],
                              domain=scorer.pkg.domain_table[[domain_row]]))
    with torch.inference_mode():
        parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
    use_da, use_ia = _learnt_steps(scorer)
    domain_level: list[dict[str, Any]] = []
    if use_da:
        domain_level = _top(scorer, r, parts["alpha"][0].float().numpy(), top)
    per_item: list[list[dict[str, Any]]] = [[] for _ in item_idx]
    if use_ia:
        a_i = parts["A_i"].float().mean(dim=(1, 2)).numpy()  # [items, L]: over heads and candidate tokens
        per_item = [_top(scorer, r, a_i[j], top) for j in range(len(item_idx))]
    return domain_level, per_item
