"""Fine-tuning a trained model to a new target domain (MODEL.md, "Fine-tuning to a new domain"; paper §3.5).

The new domain brings new domain-feature rows and possibly new items. The base model's vocabularies are
extended (existing indices never move), its embedding tables grow, and only these are trained:

- the rows of the domain-feature tables added for the new domain (its domain id; a page type or business
  line value no base domain had). **(choice)** A value the new domain shares with base domains (e.g.
  `page_type=feed`) stays frozen: its embedding already means something to the other domains, and keeping
  it is what lets the shared features carry knowledge to the new domain;
- the item-id rows of the new domain's items (those in its rows, plus any item new to the model) and any
  new item-feature values (a new category or brand);
- `W_Q, W_K, W_V, W_O` of both attention steps;
- DACDR's domain prior (step 1's bias per domain feature value and behaviour category): the rows of the domain
  feature values that train above (rows and columns new to the model start at 0, no preference).

Everything else (other embedding rows, the domain encoder, the prediction MLP) is frozen bit for bit: the
gradients of frozen rows are masked to zero and AdamW runs with weight decay 0, so Adam's moments of those
rows stay zero and their update is exactly zero. New rows start at the mean of the table's existing rows
**(choice)**: an "average" domain / item rather than noise, which also makes the no-fine-tuning
baseline meaningful.

The recipe that prepares the new domain's data, loads the base run and writes the fine-tuned run is
`dacdr.recipes.finetune`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from dacdr.data.features import FIRST_ID, OOV, PAD, Vocab, Vocabularies
from dacdr.data.samples import PreparedData
from dacdr.data.splits import Split
from dacdr.models import RecModel, create_model
from dacdr.models.phase import Phase
from dacdr.training.trainer import Trainer

# ------------------------------------------------------------------------------------------ vocabularies


def _index_map(src: Vocab, dst: Vocab) -> np.ndarray:
    """Index in `src` -> index in `dst` (which must hold every value of `src`); PAD and OOV keep theirs."""
    out = np.empty(len(src), dtype=np.int64)
    out[PAD], out[OOV] = PAD, OOV
    out[FIRST_ID:] = [dst.index[v] for v in src.values]
    return out


def align_to_vocabularies(prepared: PreparedData, base: Vocabularies) -> PreparedData:
    """Re-index `prepared` into `base`'s vocabularies, extended with the values only `prepared` has.

    Indices of `base` never move, so a model trained with `base` reads the result directly; the values it
    has never seen get the indices after its last row.
    """
    fields = set(prepared.vocabs.vocabs)
    if set(base.vocabs) != fields:
        raise ValueError(f"vocabulary fields differ: base {sorted(base.vocabs)}, data {sorted(fields)}")
    vocabs = {f: Vocab(list(base[f].values)) for f in fields}
    maps: dict[str, np.ndarray] = {}
    for f in fields:
        vocabs[f].extend(prepared.vocabs[f].values)
        maps[f] = _index_map(prepared.vocabs[f], vocabs[f])
    spec = prepared.spec

    def table(old: np.ndarray, key: str, cols: list[str]) -> np.ndarray:
        new = np.zeros((len(vocabs[key]), len(cols)), dtype=np.int64)
        rows = maps[key][np.arange(len(old))]
        for j, f in enumerate(cols):
            new[rows, j] = maps[f][old[:, j]]
        new[PAD] = PAD
        return new

    events = {k: (maps[k][v] if k in maps else v) for k, v in prepared.events.items()}
    samples = dict(prepared.samples)
    for k in ("user", "domain", "item", "behaviour"):
        samples[k] = maps[k][samples[k]]
    new_spec = spec.model_copy(update={"vocab_sizes": {f: len(vocabs[f]) for f in spec.vocab_sizes}})
    return dataclasses.replace(
        prepared, spec=new_spec, vocabs=Vocabularies(vocabs),
        item_table=table(prepared.item_table, "item", spec.item_fields),
        domain_table=table(prepared.domain_table, "domain", spec.domain_fields),
        events=events, samples=samples,
    )


# ------------------------------------------------------------------------------------------ the model


def expand_model(base: RecModel, name: str, spec, seed: int = 0) -> RecModel:
    """A copy of `base` whose embedding tables have `spec`'s (larger) sizes; old rows copied, new rows the mean."""
    from dacdr.models import get_entry

    torch.manual_seed(seed)
    fixed = get_entry(name).fixed
    model = create_model(name, spec, **{k: v for k, v in base.params.items() if k not in fixed})
    state = base.state_dict()
    new_state = model.state_dict()
    for key, old in state.items():
        new = new_state[key]
        if new.shape == old.shape:
            new_state[key] = old.clone()
        elif key.startswith("domain_prior.") and new.dim() == 2 and new.shape >= old.shape:
            grown = torch.zeros_like(new)  # (domain value, category) pairs new to the model: no preference
            grown[: old.shape[0], : old.shape[1]] = old
            new_state[key] = grown
        elif new.dim() == 2 and new.shape[1] == old.shape[1] and new.shape[0] > old.shape[0]:
            grown = torch.empty_like(new)
            grown[: old.shape[0]] = old
            real = old[FIRST_ID:] if old.shape[0] > FIRST_ID else old
            grown[old.shape[0]:] = real.mean(dim=0)
            new_state[key] = grown
        else:
            raise ValueError(f"cannot grow {key} from {tuple(old.shape)} to {tuple(new.shape)}")
    model.load_state_dict(new_state)
    return model


def trainable_rows(
    model: RecModel, base_sizes: dict[str, int], prepared: PreparedData, domain: str
) -> dict[str, torch.Tensor | None]:
    """Parameter name -> bool row mask of its trainable rows, or None when the whole tensor trains."""
    spec, s = prepared.spec, prepared.samples
    dom = prepared.vocabs["domain"].lookup(domain)
    masks: dict[str, torch.Tensor | None] = {}
    for f in spec.fields:
        size = spec.vocab_sizes[f]
        mask = torch.zeros(size, dtype=torch.bool)
        mask[base_sizes.get(f, FIRST_ID):] = True  # rows new to the model
        if f == "item":
            mask[torch.from_numpy(np.unique(s["item"][s["domain"] == dom]))] = True
        if f in spec.domain_fields and f not in spec.item_fields and f not in spec.sequence_fields:
            # only the rows the new domain uses; a new value of another new domain would not train here
            used = torch.zeros(size, dtype=torch.bool)
            used[int(prepared.domain_table[dom, spec.domain_fields.index(f)])] = True
            mask &= used
        mask[PAD] = False
        if mask.any():
            masks[f"embeddings.tables.{f}.weight"] = mask
    for n, _ in model.named_parameters():
        if n.startswith(("domain_attention.", "item_attention.")):
            masks[n] = None
    # the domain prior's rows are domain feature values: those of the new domain that train above
    for i, (j, _) in enumerate(getattr(model, "prior_pairs", [])):
        rows = masks.get(f"embeddings.tables.{spec.domain_fields[j]}.weight")
        if rows is not None:
            masks[f"domain_prior.{i}"] = rows
    return masks


def count_parameters(model: RecModel, masks: dict[str, torch.Tensor | None]) -> tuple[int, int]:
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    trainable = 0
    for n, m in masks.items():
        p = params[n]
        trainable += p.numel() if m is None else int(m.sum()) * p.shape[1]
    return trainable, total


class FinetuneTrainer(Trainer):
    """The trainer with row-level freezing: gradients of frozen rows are zeroed before AdamW sees them."""

    def __init__(self, *args: Any, masks: dict[str, torch.Tensor | None], **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.cfg.weight_decay:
            raise ValueError("fine-tuning needs weight_decay 0: decay would move frozen rows")
        self.masks = masks
        params = dict(self.model.named_parameters())
        for n, m in masks.items():
            if m is not None:
                row_mask = m.to(params[n].dtype).unsqueeze(1)
                params[n].register_hook(lambda g, rm=row_mask: g * rm)

    def phases(self) -> list[Phase]:
        return [Phase("finetune", "targets", trainable=lambda n: n in self.masks)]

    def _init_output_bias(self) -> None:
        """The output layer is frozen: keep the base model's bias."""

    def _init_from_data(self) -> None:
        """The base model's weights are kept; the new domain's prior rows start at 0 (`expand_model`)."""


def restrict_split(prepared: PreparedData, domain: str) -> PreparedData:
    """`prepared` whose training and validation samples are the target rows of `domain` only."""
    dom = prepared.vocabs["domain"].lookup(domain)
    d = prepared.samples["domain"]
    sp = prepared.split
    split = Split(sp.train_target[d[sp.train_target] == dom], sp.train_source[d[sp.train_source] == dom],
                  sp.valid[d[sp.valid] == dom], sp.test, sp.test_cold)
    if len(split.train_target) == 0:
        raise ValueError(f"domain {domain!r} has no training rows before the test period")
    return dataclasses.replace(prepared, split=split)
