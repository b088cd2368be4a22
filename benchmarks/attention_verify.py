"""Inspect trained DACDR runs: how uniform their attention is, and what their value path does to the history.

For each run directory (its `config.yaml` names the data), on the cold-start test samples with at least two
behaviours:

- `entropy_alpha`, `entropy_item`: the normalised entropy (entropy / log n, 1 = uniform) of step 1's
  allocation alpha and of step 2's weights (mean over heads and candidate tokens);
- `cos_value_path`: cos(x, W_O W_V x) for x = the attention-weighted history (per step with a value path):
  1 when the value path keeps the summary in the candidate's embedding space, about 0 when it rotates it
  (the match feature of dacdr 0.1 compared the candidate with W_O W_V x).

    python benchmarks/attention_verify.py /work/study/runs/demo/*DACDR-seed*
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from dacdr.config import RunConfig
from dacdr.data.batches import BatchGatherer
from dacdr.data.prepare import prepare
from dacdr.training.checkpoint import load_model


def _entropy(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum(1).clamp_min(2).float()
    h = -(w.clamp_min(1e-12).log() * w * mask).sum(1)
    return h / n.log()


@torch.no_grad()
def inspect(run: Path, limit: int = 20_000) -> dict[str, float]:
    cfg = RunConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
    prepared = prepare(cfg.data)
    model, _ = load_model(run)
    model.eval()
    split, s = prepared.split, prepared.samples
    cold = split.test[split.test_cold]
    cold = cold[(s["seq_end"][cold] - s["seq_start"][cold]) >= 2][:limit]
    stats: dict[str, list[float]] = {"entropy_alpha": [], "entropy_item": [], "cos_value_path_domain": [],
                                     "cos_value_path_item": []}
    for batch in BatchGatherer(prepared).iterate(cold, 4096):
        parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
        mask = batch["seq_mask"]
        stats["entropy_alpha"] += _entropy(parts["alpha"], mask).tolist()
        stats["entropy_item"] += _entropy(parts["A_i"].mean(dim=(1, 2)), mask).tolist()
        for key, att, w in (("domain", model.domain_attention, parts["alpha"]),
                            ("item", model.item_attention, parts["A_i"].mean(dim=(1, 2)))):
            if att is None:
                continue
            x = (w.unsqueeze(-1) * parts["seq"]).sum(1)
            y = att.w_o(att.w_v(x))
            stats[f"cos_value_path_{key}"] += torch.nn.functional.cosine_similarity(x, y, dim=1).tolist()
    return {k: round(float(np.mean(v)), 4) for k, v in stats.items() if v} | {"samples": int(len(cold)),
                                                                               "run": str(run)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        print(json.dumps(inspect(run)), flush=True)


if __name__ == "__main__":
    main()
