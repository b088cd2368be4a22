"""PTUPCDR (Zhu et al., "Personalized Transfer of User Preferences for Cross-domain Recommendation",
WSDM 2022).

1. **source** / **target**: matrix factorisation in each domain (as EMCDR's stages 1–2).
2. **meta**: a meta network turns the user's source history into a *personalised* bridge: a characteristic
   encoder attends over the embeddings of her source items (`a_j = softmax_j(w₂ᵀ ReLU(W₁ e_j))`,
   `p_u = Σ a_j e_j`) and a decoder MLP outputs a `k × k` matrix `W_u`; her target embedding is
   `u_s W_u`. Unlike EMCDR it is trained with the task-oriented loss: the predicted score of `u_s W_u`
   against target items, on the target rows of overlapping users. One decoder per target domain.

Inference uses `u_s W_u` for every user (cold-start users have nothing else).

Speed: a user's rows in a batch usually share one history (all of them when the split reads the whole history,
`sequence_cutoff: all`), so `u_s W_u` is computed once per distinct (user, target, history) in the batch and
shared by its rows (the same function: identical outputs). `schedule` sets the epochs, batch size and learning rate of each
phase (`source`, `target`, `meta`); unset values are the trainer's (`train.*`).

Adaptations to click logs: logistic MF (task loss on clicks) with item and per-domain biases; the history is
the source sequence before the scored impression, i.e. time-ordered and leakage-free (the original code
reads a per-user list in file order). Inputs: user id, item id and the item ids of the source sequence.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from dacdr.data.features import FeatureSpec
from dacdr.models.emcdr import BridgeModel, name_starts, overlapping_rows
from dacdr.models.layers import _MASKED
from dacdr.models.multidomain import pick
from dacdr.models.phase import Phase
from dacdr.models.registry import register

PHASES = ("source", "target", "meta")
SHARE_FROM = 256
"""the smallest batch in which `map_user` looks for rows sharing a history"""
SCHEDULE_KEYS = {"epochs": int, "batch_size": int, "lr": float}


def check_schedule(schedule: dict[str, Any] | None) -> dict[str, dict[str, int | float]]:
    """`{phase: {epochs, batch_size, lr}}` with every name and value checked; a clear error names a bad one."""
    out: dict[str, dict[str, int | float]] = {}
    if schedule is None:
        return out
    if not isinstance(schedule, dict):
        raise ValueError(f"PTUPCDR schedule: expected a mapping phase -> settings, got {type(schedule).__name__}")
    for phase, settings in schedule.items():
        if phase not in PHASES:
            raise ValueError(f"PTUPCDR schedule: unknown phase {phase!r} (phases: {', '.join(PHASES)})")
        if not isinstance(settings, dict):
            raise ValueError(f"PTUPCDR schedule.{phase}: expected a mapping, got {type(settings).__name__}")
        out[phase] = {}
        for key, value in settings.items():
            kind = SCHEDULE_KEYS.get(key)
            if kind is None:
                raise ValueError(f"PTUPCDR schedule.{phase}: unknown setting {key!r} "
                                 f"(settings: {', '.join(SCHEDULE_KEYS)})")
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0 \
                and (kind is float or float(value).is_integer())
            if not ok:
                raise ValueError(f"PTUPCDR schedule.{phase}.{key}: expected a positive {kind.__name__}, got {value!r}")
            out[phase][key] = kind(value)
    return out


def distinct_rows(x: torch.Tensor, max_share: float = 1.0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For a [B, L] integer tensor: (first, inverse), the index of one row per distinct row and, per row, the
    position of its distinct row in `first` (`x[first][inverse]` equals `x`); None when more than `max_share`
    of the rows are distinct (no row repeats, at the default). Rows are hashed to one integer each (a 1-D
    unique is far cheaper than `torch.unique(dim=0)`), and the result is checked against `x`, so a hash
    collision means None, never a wrong answer."""
    n = x.shape[0]
    weights = torch.randint(1, 2**62, (x.shape[1],), generator=torch.Generator().manual_seed(0x5eed), dtype=torch.int64)
    keys = (x.to(torch.int64) * weights.to(x.device)).sum(1)  # wraps around on overflow: still a hash
    distinct, inverse = torch.unique(keys, return_inverse=True)
    if len(distinct) >= n or len(distinct) > max_share * n:
        return None
    first = torch.full((len(distinct),), n, dtype=torch.int64, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(n, device=x.device), reduce="amin")
    if not torch.equal(x[first][inverse], x):
        return None
    return first, inverse


@register("PTUPCDR", family="id-bridge", order=60)
class PTUPCDR(BridgeModel):
    def __init__(self, spec: FeatureSpec, n_users: int | None = None, dim: int = 32, meta_dim: int = 50,
                 schedule: dict[str, dict[str, int | float]] | None = None):
        checked = check_schedule(schedule)
        super().__init__(spec, n_users, dim, meta_dim=meta_dim, **({"schedule": checked} if checked else {}))
        self.schedule = checked
        self.meta_encoder = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1, bias=False))
        self.meta_decoders = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, meta_dim), nn.ReLU(), nn.Linear(meta_dim, dim * dim))
            for _ in range(self.n_targets)
        )

    def personal_bridge(self, seq: torch.Tensor, seq_mask: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """[B, k, k]: the bridge decoded from the user's source history (zeros in, for an empty history)."""
        history = self.source_item(seq[..., 0])  # [B, L, k]
        logits = self.meta_encoder(history).squeeze(-1).masked_fill(~seq_mask, _MASKED)
        weights = logits.softmax(-1) * seq_mask.to(history.dtype)
        profile = (weights.unsqueeze(-1) * history).sum(1)
        per_target = torch.stack([d(profile) for d in self.meta_decoders], dim=1)
        return pick(per_target, slot).view(-1, self.dim, self.dim)

    def map_user(self, user, slot, seq, seq_mask):
        # Rows with the same user, target and history have the same transferred embedding: compute it once
        # per distinct (user, slot, history) of the batch (the key holds the item ids and the mask; -1 is no id).
        # Sharing costs a hash and two gathers: when few rows repeat it does not pay (a meta step on amazon-dense,
        # measured: 9 % slower at batch 128, where few rows repeat; 1.4x faster at 512, 3x at 2048).
        shared = None
        if len(user) >= SHARE_FROM:
            key = torch.cat([user[:, None], slot[:, None], seq[..., 0].masked_fill(~seq_mask, -1)], 1)
            shared = distinct_rows(key, max_share=0.75)
        if shared is not None:
            first, inverse = shared
            return self._map_user(user[first], slot[first], seq[first], seq_mask[first])[inverse]
        return self._map_user(user, slot, seq, seq_mask)

    def _map_user(self, user, slot, seq, seq_mask):
        bridge = self.personal_bridge(seq, seq_mask, slot)
        return torch.bmm(self.source_user(user).unsqueeze(1), bridge).squeeze(1)

    def phases(self) -> list[Phase]:

        # The meta phase's forward is the deployed one, so the ordinary task loss trains the meta network.
        phases = [*self.pretraining_phases(),
                  Phase("meta", "targets", select=overlapping_rows, trainable=name_starts("meta_"))]
        # The MF phases' training forward reads no history (`BridgeModel.forward`): their batches leave it out.
        return [dataclasses.replace(p, history=p.name == "meta", **self.schedule.get(p.name, {})) for p in phases]
