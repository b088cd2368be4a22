"""Does DACDR's attention help? Train model variants on synthetic worlds over seeds; one JSON line per run.

The numbers behind docs/results.md ("Does the attention help?") and docs/models.md. Every run selects its
epoch on validation (the trainer's rule); the test metrics are read only for the report. Resumable: a
(world, variant, seed) already in the output file is skipped.

    python benchmarks/attention_study.py --world demo --variants DACDR,pool --seeds 0,1,2 --out study.jsonl
    python benchmarks/attention_study.py --report study.jsonl --baseline pool

Worlds: `demo`, `industrial` (the presets, at the demo's and the bench's budgets), `mechanism` and
`mechanism-s<STRENGTH>` (the mechanism preset at another strength; s0 is the same people without it) and
`mechanism-i<WEIGHT>[-b<SPREAD>][-best]` (the preset with another weight of the item-level part, the preset's is
1, optionally the brands' share of the item style moved to the items, and the best match as the item-level part).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from dacdr.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dacdr.data.features import FIRST_ID
from dacdr.data.prepare import prepare
from dacdr.data.synthetic import SyntheticConfig, focus_categories, generate, get_preset
from dacdr.data.synthetic.world import build_world
from dacdr.models.dacdr import DACDR
from dacdr.models.layers import CrossAttention
from dacdr.models.registry import register
from dacdr.recipes.bench import bench_settings
from dacdr.recipes.demo import DEMO_SOURCE_SAMPLE_RATE, demo_settings
from dacdr.recipes.train import train_run
from dacdr.reporting.attention import relevance_mass
from dacdr.reporting.significance import paired_test
from dacdr.reporting.summary import REFERENCE_KEYS
from dacdr.training.checkpoint import load_model

V01 = {"match_on": "values", "ablation": "drop"}  # dacdr 0.1's DACDR and ablations
# dacdr 0.2's defaults, pinned so that a label keeps its meaning when the registry's defaults move (0.3 turned
# on the count features: `DACDR+hits` is 0.3's DACDR; 0.4 the sharper steps: `DACDR+hits+T0.25+floor`; 0.5 `pinit
# DACDR+hits+T0.25+floor`; 0.6 the same `+umean`)
V02 = {"match_counts": False, "domain_mass_feature": False, "temperature": 1.0, "prior_floor": False,
       "domain_prior": False, "history_mean": False}
# the domain prior as first measured (plan items 40-49): started at 0, gain 1 unless a `+pg…` lever says otherwise
ZERO_PRIOR = {"domain_prior": True, "domain_prior_gain": 1.0, "domain_prior_init": "zero"}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "paper": ("DACDR (paper)", {}),
    "v0.1 DACDR": ("DACDR", V01 | V02),
    "v0.1 w/o DA": ("DACDR w/o DA", V01 | V02),
    "v0.1 w/o IA": ("DACDR w/o IA", V01 | V02),
    "v0.1 pool": ("DACDR w/o DA&IA", V01 | V02),
    "DACDR": ("DACDR", V02),
    "w/o DA": ("DACDR w/o DA", V02),
    "w/o IA": ("DACDR w/o IA", V02),
    "pool": ("DACDR w/o DA&IA", V02),
    "DNN-multi": ("DNN-multi", {}),
    # study-only probe (mechanism worlds): step 1 replaced by the world's truth, the uniform allocation over the
    # behaviours in the target's focus categories; the architecture's ceiling for a perfect domain-level step
    "ofocus": ("DACDR oracle-focus", V02),
    # the same with the world's soft focus (plain worlds): step 1's allocation proportional to the target's focus
    # weight of each behaviour's topic, so that its normaliser is the interest term's Z (plan item 38)
    "ofocus-soft": ("DACDR oracle-focus", V02 | {"soft": True}),
    # and step 2 replaced by the uniform allocation over the behaviours of the candidate's category (inside the
    # prior: the floored step 1), the ceiling for a perfect item-level step
    "oitem": ("DACDR oracle-item", V02),
    # and the item table started from the world's item styles (the residual of each item's latent vector): what
    # the models would do if their item embeddings carried the style the mechanism's item-level part compares
    "oemb DACDR": ("DACDR oracle-embedding", V02),
    "oemb w/o DA": ("DACDR w/o DA oracle-embedding", V02),
    "oemb w/o IA": ("DACDR w/o IA oracle-embedding", V02),
    "oemb pool": ("DACDR w/o DA&IA oracle-embedding", V02),
    # step 1's query-key map reparametrised with a gain (`+g4`, `+g16`): the same start, and under Adam the
    # map learns about that many times faster (plan item 39); a probe of whether step 1's speed is the limit
    "gain DACDR": ("DACDR step1-gain", V02),
    "gain w/o IA": ("DACDR w/o IA step1-gain", V02),
    # step 1's logits plus a learnt bias per (domain feature value, behaviour category), started at 0 (plan item
    # 40; a study-only probe then, the model's `domain_prior` since, gain 1 as first measured): a direct path for
    # the domain's focus over the history's topics
    "dprior DACDR": ("DACDR", V02 | ZERO_PRIOR),
    "dprior w/o IA": ("DACDR w/o IA", V02 | ZERO_PRIOR),
    # the same with step 2's prior floor started elsewhere (`+fi0`: share 0.5 instead of 0.12; plan item 45)
    "finit DACDR": ("DACDR floor-init", V02 | ZERO_PRIOR),
    # the domain prior (gain 4) started from each target's category frequencies in its training rows (plan item 50;
    # a study-only probe then, the model's `domain_prior_init="data"` since)
    "pinit DACDR": ("DACDR", V02 | {"domain_prior": True, "domain_prior_gain": 4.0, "domain_prior_init": "data"}),
    "pinit w/o IA": ("DACDR w/o IA", V02 | {"domain_prior": True, "domain_prior_gain": 4.0, "domain_prior_init": "data"}),
}
LEVERS: dict[str, dict[str, Any]] = {
    "id": {"value_init": "identity"},
    "pos": {"position_keys": True},
    "T0.5": {"temperature": 0.5},
    "mass": {"mass_feature": True},
    "hits": {"match_counts": True},
    "dmass": {"domain_mass_feature": True},
    "ucount": {"count_weights": "uniform"},
    "bcount": {"count_weights": "both"},
    "dcount": {"count_weights": "domain"},
    "drop0.2": {"dropout": 0.2},
    "values": {"match_on": "values"},
    "drop": {"ablation": "drop"},
    "T0.25": {"temperature": 0.25},
    "T0.1": {"temperature": 0.1},
    "cos": {"attention_score": "cosine"},
    "floor": {"prior_floor": True},
    "bonus": {"match_bonus": True},
    "bonus2": {"match_bonus": True, "match_bonus_init": 2.0},
    "frozen": {"freeze_items": True},  # `oemb` probes only: the item table stays at its start
    "norm1": {"item_norm": 1.0},  # `oemb` probes only: the styles at unit length (0.3 without)
    "imatch": {"item_match": True},  # `oemb` probes only: the item's match on the item table alone
    "g4": {"step1_gain": 4.0},  # `gain` probes only
    "g16": {"step1_gain": 16.0},
    "g64": {"step1_gain": 64.0},
    "g0": {"step1_gain": 0.0},  # `gain` probes only: step 1's query-key scores off (0), its domain prior alone
    "dp4": ZERO_PRIOR | {"domain_prior_gain": 4.0},  # the zero-started domain prior (gain 4) on any variant
    "pg4": {"domain_prior_gain": 4.0},  # with `dprior`: the table times 4 (it learns 4 times faster under Adam)
    "pg16": {"domain_prior_gain": 16.0},
    "pid": {"domain_prior_keys": ("domain",)},  # with `dprior`: keyed on the domain id only
    "fi0": {"floor_init": 0.0},
    "umean": {"history_mean": True},  # the whole history's mean into the encoder (plan item 52)  # `finit` probes only: the floor's logit starts at 0 (share 0.5)
}


@register("DACDR oracle-focus", family="study", order=999)
class OracleFocusDACDR(DACDR):
    """Study probe: DACDR whose step 1 is the world's truth (see `ofocus`); never a user-facing model."""

    def __init__(self, spec: Any, oracle_focus: dict[str, list[int]] | None = None, focus_field: int = 1,
                 n_categories: int = 1, soft: bool = False, focus_weights: dict[str, list[float]] | None = None,
                 **params: Any):
        super().__init__(spec, **params)
        self.params |= {"oracle_focus": oracle_focus, "focus_field": focus_field, "n_categories": n_categories,
                        "soft": soft, "focus_weights": focus_weights}
        table = torch.zeros(max(int(k) for k in oracle_focus) + 1, n_categories, dtype=torch.bool)
        for dom, cats in oracle_focus.items():
            table[int(dom), cats] = True
        self.register_buffer("focus_table", table, persistent=False)
        # soft: [domains, categories] focus weights, indexed by the category vocabulary (unknown ids: the mean);
        # a domain without weights (the source) attends uniformly
        weights = torch.ones(table.shape)
        for dom, ws in (focus_weights or {}).items():
            weights[int(dom)] = torch.tensor(ws)
        self.register_buffer("focus_weights", weights if soft else None, persistent=False)
        self.focus_field = focus_field

    def attend(self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor,
               domain: torch.Tensor) -> dict[str, torch.Tensor]:
        b = domain.shape[0]
        dom = domain[:, 0].clamp_max(self.focus_table.shape[0] - 1)
        if self.focus_weights is not None:  # soft: proportional to the domain's weight of each behaviour's topic
            rel_w = torch.gather(self.focus_weights[dom], 1, seq[..., self.focus_field].expand(b, -1))
            rel_w = rel_w * seq_mask.expand(b, -1)
        else:
            rows = self.focus_table[dom]  # [B, C]
            rel = torch.gather(rows, 1, seq[..., self.focus_field].expand(b, -1)) & seq_mask.expand(b, -1)
            rel_w = torch.where(rel.any(1, keepdim=True), rel, seq_mask.expand(b, -1)).float()  # none: uniform
        w = rel_w / rel_w.sum(1, keepdim=True).clamp_min(1e-12)
        att = self.domain_attention

        def weights_from_scores(logits: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, log_prior: Any,
                                with_mass: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
            weights = w[:, None, None, :].expand(-1, att.heads, logits.shape[1] // att.heads, -1)
            return weights, (torch.zeros(weights.shape[0], weights.shape[2]) if with_mass else None)

        att.weights_from_scores = weights_from_scores
        fuse = self.fuse_steps
        self.fuse_steps = False  # the probe replaces the step's own method
        try:
            return super().attend(seq, seq_mask, item, domain)
        finally:
            del att.weights_from_scores
            self.fuse_steps = fuse


class OracleEmbeddingDACDR(DACDR):
    """Study probe: DACDR (or an ablation) whose item table starts from the world's item styles, written by
    `run` to `item_init` (a .npy of [item vocabulary, dim]); never a user-facing model."""

    def __init__(self, spec: Any, item_init: str | None = None, freeze_items: bool = False, item_norm: float = 0.3,
                 item_match: bool = False, **params: Any):
        super().__init__(spec, **params)
        self.params |= {"item_init": item_init, "freeze_items": freeze_items, "item_norm": item_norm,
                        "item_match": item_match}
        self.item_match = item_match
        if item_init is not None:
            with torch.no_grad():
                self.embeddings.tables["item"].weight.copy_(torch.from_numpy(np.load(item_init)))
        if freeze_items:  # a buffer, not a parameter: the trainer's phases set requires_grad on parameters
            self.embeddings.tables["item"] = _FrozenEmbedding(self.embeddings.tables["item"].weight.detach().clone())


    def attend(self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor,
               domain: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().attend(seq, seq_mask, item, domain)
        if self.item_match:  # the candidate item's match read on the item table alone, not the summed tokens
            f_seq, f_item = self.spec.sequence_fields.index("item"), self.spec.item_fields.index("item")
            items = self.embeddings.tables["item"](seq[..., f_seq])  # [B or 1, L, k]
            offered = out["offered"].clone()
            offered[:, f_item] = (out["A_i"].mean(1)[:, f_item, None, :] @ items).squeeze(1)
            out["offered"] = offered
        return out


class _FrozenEmbedding(torch.nn.Module):
    """An embedding table that training never updates (same state-dict key as nn.Embedding's)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(ids, self.weight, padding_idx=0)


for _name, _variant in (("DACDR", "full"), ("DACDR w/o DA", "no_da"), ("DACDR w/o IA", "no_ia"),
                        ("DACDR w/o DA&IA", "pool")):
    register(f"{_name} oracle-embedding", OracleEmbeddingDACDR, family="study", order=999, variant=_variant)


class _GainAttention(CrossAttention):
    """`CrossAttention` whose query-key map is ``gain`` times the product of its (rescaled) weights."""

    gain: float = 1.0

    def query_map(self) -> torch.Tensor:
        return super().query_map() * self.gain


class StepOneGainDACDR(DACDR):
    """Study probe: DACDR whose step-1 map ``W_Q^T W_K`` is ``gain`` times the product of weights started at
    ``1 / sqrt(gain)`` of the usual: the same model at the start, step 1 learning faster; never user-facing."""

    def __init__(self, spec: Any, step1_gain: float = 1.0, **params: Any):
        super().__init__(spec, **params)
        self.params |= {"step1_gain": step1_gain}
        da = self.domain_attention
        if da is not None and da.w_q is not None:
            if step1_gain > 0:
                with torch.no_grad():
                    da.w_q.weight.div_(math.sqrt(step1_gain))
                    da.w_k.weight.div_(math.sqrt(step1_gain))
            da.__class__ = _GainAttention
            da.gain = step1_gain  # 0: scores of 0 (and no gradient for the map): step 1 is its prior alone


for _name, _variant in (("DACDR", "full"), ("DACDR w/o IA", "no_ia")):
    register(f"{_name} step1-gain", StepOneGainDACDR, family="study", order=999, variant=_variant)


@register("DACDR floor-init", family="study", order=999)
class FloorInitDACDR(DACDR):
    """Study probe: DACDR whose step-2 prior floor's logit starts at ``floor_init`` (the model's: -2, a share of
    0.12); never user-facing."""

    def __init__(self, spec: Any, floor_init: float = -2.0, **params: Any):
        super().__init__(spec, **params)
        self.params |= {"floor_init": floor_init}
        if self.prior_logit is not None:
            with torch.no_grad():
                self.prior_logit.fill_(floor_init)


def focus_weights(path: Path, prepared: Any) -> dict[str, list[float]]:
    """Per target domain id, the world's focus weight of each category id (the vocabulary's order; ids that are
    no topic, padding and unknown, get the mean weight): the soft oracle step 1 of `ofocus-soft`."""
    spec = json.loads((path / "dataset.json").read_text())["generator"]
    w = build_world(SyntheticConfig.model_validate(spec["config"]), int(spec["seed"]))
    cats = prepared.vocabs["category"]
    out = {}
    for d, name in enumerate(w.domains):
        if d == 0:
            continue
        row = [float(w.focus[d].mean())] * prepared.spec.vocab_sizes["category"]
        for t in range(w.focus.shape[1]):
            row[cats.lookup(f"cat_{t:02d}")] = float(w.focus[d][t])
        out[str(prepared.vocabs["domain"].lookup(name))] = row
    return out


def oracle_item_init(prepared: Any, path: Path, dim: int, norm: float = 0.3, seed: int = 0) -> np.ndarray:
    """[item vocabulary, dim]: each item's style residual (unit length times `norm`) in the first latent_dim
    columns, the rest the table's usual N(0, 0.05) start; padding and unknown ids random too."""
    spec = json.loads((path / "dataset.json").read_text())["generator"]
    cfg = SyntheticConfig.model_validate(spec["config"])
    world = build_world(cfg, int(spec["seed"]))
    rng = np.random.default_rng(seed)
    vocab = prepared.vocabs["item"]
    table = rng.normal(0.0, 0.05, (prepared.spec.vocab_sizes["item"], dim)).astype(np.float32)
    ids = np.asarray(vocab.values).astype(np.int64)
    res = world.item_residual[ids]
    res = res / np.linalg.norm(res, axis=1, keepdims=True).clip(1e-12) * norm
    k = min(dim, res.shape[1])
    table[FIRST_ID:FIRST_ID + len(ids), :k] = res[:, :k]
    table[0] = 0.0
    return table


@register("DACDR oracle-item", family="study", order=999)
class OracleItemDACDR(DACDR):
    """Study probe: DACDR whose step 2 is the behaviours of the candidate's category, weighted by the prior (see
    `oitem`); never a user-facing model."""

    def __init__(self, spec: Any, category_field: int = 1, item_category: int = 1, **params: Any):
        super().__init__(spec, **params)
        self.params |= {"category_field": category_field, "item_category": item_category}
        self.category_field, self.item_category = category_field, item_category

    def attend(self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor,
               domain: torch.Tensor) -> dict[str, torch.Tensor]:
        b = item.shape[0]
        same = (seq[..., self.category_field].expand(b, -1) == item[:, self.item_category:self.item_category + 1])
        same = same & seq_mask.expand(b, -1)
        att = self.item_attention
        fuse = self.fuse_steps
        self.fuse_steps = False  # the probe replaces the step's own method

        def weights_and_mass(q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                             log_prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            prior = log_prior.exp() if log_prior is not None else mask.float().expand(b, -1)
            w = prior * same.float()
            w = torch.where(same.any(1, keepdim=True), w, prior * mask.float())  # none of its category: the prior
            w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
            weights = w[:, None, None, :].expand(-1, att.heads, q.shape[1], -1)
            return weights, torch.zeros(b, att.heads, q.shape[1], dtype=w.dtype, device=w.device)

        att.weights_and_mass = weights_and_mass
        att.weights = lambda *a, **k: weights_and_mass(*a, **k)[0]
        try:
            return super().attend(seq, seq_mask, item, domain)
        finally:
            del att.weights_and_mass, att.weights
            self.fuse_steps = fuse


def variant(label: str) -> tuple[str, dict[str, Any]]:
    """`DACDR`, `pool+id`, `w/o IA+id+pos`: a base variant and levers joined by '+'."""
    base, *levers = label.split("+")
    name, params = VARIANTS[base]
    params = dict(params)
    for lever in levers:
        params |= LEVERS[lever]
    return name, params


def synthetic_config(name: str) -> SyntheticConfig:
    """The generator config of a world label: a preset, `mechanism-s<STRENGTH>` or
    `mechanism-i<WEIGHT>[-b<SPREAD>][-best]` (module docstring)."""
    if name.startswith("mechanism-s"):
        return get_preset("mechanism", mechanism={"strength": float(name.removeprefix("mechanism-s"))})
    if name.startswith("mechanism-i"):
        # The item-level part's weight (the preset's is 1): how much step 2's selection is worth; `-b<S>` moves
        # the items' style residual from their brand to the item itself (brand spread S, the item spread raised
        # to keep the residual's variance), so that brand matches no longer reveal it; `-best`: the item-level
        # part is the best match instead of the mean similarity.
        weight, *opts = name.removeprefix("mechanism-i").split("-")
        brand = next((o[1:] for o in opts if o.startswith("b") and o != "best"), "")
        mech: dict[str, Any] = {"item_weight": float(weight)} | ({"item_part": "best"} if "best" in opts else {})
        overrides: dict[str, Any] = {"mechanism": mech}
        if brand:
            base = get_preset("mechanism")
            total = base.brand_latent_noise**2 + base.item_latent_noise**2
            overrides |= {"brand_latent_noise": float(brand), "item_latent_noise": math.sqrt(total - float(brand) ** 2)}
        return get_preset("mechanism", **overrides)
    return get_preset(name)


def world(name: str, root: Path) -> tuple[Path, DataConfig, TrainConfig, int]:
    """Dataset directory (generated on first use), data config, training budget and embedding size."""
    synth = synthetic_config(name)
    if name == "industrial":
        settings = bench_settings("industrial")
        rate, train, dim = settings.source_sample_rate, settings.train, 16
    else:
        _, train = demo_settings(quick=False)
        rate, dim = DEMO_SOURCE_SAMPLE_RATE, 32
    path = root / name
    if not (path / "dataset.json").exists():
        generate(synth, path, seed=0)
    return path, DataConfig(path=str(path), source_sample_rate=rate), train.model_copy(update={"progress": False}), dim


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    root = Path(args.data_root)
    path, data_cfg, train, dim = world(args.world, root)
    # A budget other than the world's own is recorded as part of the world's label: `demo@e8-p3-s1.0`.
    budget = {k: v for k, v in (("epochs", args.epochs), ("patience", args.patience),
                                ("weight_decay", args.weight_decay)) if v is not None}
    train = train.model_copy(update=budget)
    if args.source_rate is not None:
        data_cfg = data_cfg.model_copy(update={"source_sample_rate": args.source_rate})
    label_world = args.world + (f"@e{train.epochs}-p{train.patience}-s{data_cfg.source_sample_rate}"
                                + (f"-wd{train.weight_decay}" if train.weight_decay else "")
                                if budget or args.source_rate is not None else "")
    prepared = prepare(data_cfg.model_copy(update={"path": str(path)}), log=lambda *a: None)
    out = Path(args.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["world"], r["variant"], r["seed"]))
    split = prepared.split
    for seed in [int(s) for s in args.seeds.split(",")]:
        for label in args.variants.split(","):
            if (label_world, label, seed) in done:
                continue
            name, params = variant(label)
            params.setdefault("dim", dim)
            if name == "DACDR oracle-item":
                params |= {"category_field": prepared.spec.sequence_fields.index("category"),
                           "item_category": prepared.spec.item_fields.index("category")}
            if name.endswith("oracle-embedding"):
                norm = params.get("item_norm", 0.3)
                init = Path(args.runs) / label_world / ("oracle-item-init.npy" if norm == 0.3
                                                        else f"oracle-item-init-norm{norm}.npy")
                if not init.exists():
                    init.parent.mkdir(parents=True, exist_ok=True)
                    np.save(init, oracle_item_init(prepared, path, params["dim"], norm=norm))
                params |= {"item_init": str(init)}
            if name == "DACDR oracle-focus":
                cats = prepared.vocabs["category"]
                params |= {"focus_field": prepared.spec.sequence_fields.index("category"),
                           "n_categories": len(cats),
                           "oracle_focus": {str(prepared.vocabs["domain"].lookup(d)): [cats.lookup(c) for c in cs]
                                            for d, cs in focus_categories(path).items()}}
                if params.get("soft"):
                    params["focus_weights"] = focus_weights(path, prepared)
            cfg = RunConfig(data=data_cfg, model=ModelConfig(name=name, params=params),
                            train=train.model_copy(update={"seed": seed, "num_threads": args.threads}))
            run_dir = Path(args.runs) / label_world / f"{label.replace('/', '').replace(' ', '_')}-seed{seed}"
            t0 = time.perf_counter()
            r = train_run(cfg, prepared=prepared, run_dir=run_dir, console=Console(quiet=True), resume=False)
            record = {
                "world": label_world, "variant": label, "model": name, "params": params, "seed": seed,
                "valid_score": max(h.get("valid_score", float("nan")) for h in r["history"]),
                "epochs": len(r["history"]),
                "cold_auc": {d: m["auc"] for d, m in r["test"]["cold"].items()},
                "all_auc": {d: m["auc"] for d, m in r["test"]["all"].items()},
                "seconds": round(time.perf_counter() - t0, 1),
                "valid_curve": [round(h.get("valid_score", float("nan")), 5) for h in r["history"]],
                "samples_per_s": [round(h.get("samples_per_s", 0.0)) for h in r["history"]],
            }
            for key in REFERENCE_KEYS:
                if key in r:
                    record[key] = {d: m["auc"] for d, m in r[key]["cold"].items()}
            if name.startswith("DACDR") and args.world.startswith("mechanism"):
                model, _ = load_model(run_dir)
                record["relevance"] = relevance_mass(model, prepared, path, split.test[split.test_cold])
            with open(out, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{label_world} {label} seed {seed}: cold AUC "
                  f"{ {d: round(v, 4) for d, v in record['cold_auc'].items()} } valid {record['valid_score']:.4f} "
                  f"({record['seconds']:.0f} s)", flush=True)


def report(path: str, baseline: str) -> None:
    """Per world: each variant's cold-start AUC (mean ± std over seeds, per target and their mean), its paired
    difference to `baseline` on the mean of the targets, and the validation score it was selected on."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    for w in dict.fromkeys(r["world"] for r in rows):
        runs = [r for r in rows if r["world"] == w]
        targets = list(runs[0]["cold_auc"])
        print(f"\n### {w}\n")
        ref = runs[0]
        refs = " · ".join(f"{k} " + "/".join(f"{ref[k][d]:.4f}" for d in targets)
                          for k in REFERENCE_KEYS if k in ref)
        print(refs + "\n")
        print("| variant | seeds | " + " | ".join(targets) + " | mean | valid | Δ mean vs " + baseline + " | p |")
        print("|---|---|" + "---|" * (len(targets) + 4))
        by = {v: {r["seed"]: r for r in runs if r["variant"] == v} for v in dict.fromkeys(r["variant"] for r in runs)}
        base = by.get(baseline, {})
        for v, per_seed in by.items():
            seeds = sorted(per_seed)
            cells = []
            for d in targets:
                a = [per_seed[s]["cold_auc"][d] for s in seeds]
                cells.append(f"{np.mean(a):.4f} ± {np.std(a, ddof=1) if len(a) > 1 else 0:.4f}")
            mean = [float(np.mean(list(per_seed[s]["cold_auc"].values()))) for s in seeds]
            valid = [per_seed[s]["valid_score"] for s in seeds]
            common = [s for s in seeds if s in base]
            diff = "—"
            pval = ""
            if v != baseline and len(common) > 0:
                t = paired_test([float(np.mean(list(per_seed[s]["cold_auc"].values()))) for s in common],
                                [float(np.mean(list(base[s]["cold_auc"].values()))) for s in common])
                diff = f"{t['mean_diff']:+.4f} ± {t['std_diff']:.4f}"
                pval = "n/a" if math.isnan(t["p_value"]) else f"{t['p_value']:.3g}"
            print(f"| {v} | {len(seeds)} | " + " | ".join(cells) + f" | {np.mean(mean):.4f} | {np.mean(valid):.4f} "
                  f"| {diff} | {pval} |")
        if base:
            print(f"\nper target, paired over seeds: variant − {baseline} (mean ± std, p)")
            for v, per_seed in by.items():
                common = [s for s in sorted(per_seed) if s in base]
                if v == baseline or len(common) < 2:
                    continue
                cells = []
                for d in targets:
                    t = paired_test([per_seed[s]["cold_auc"][d] for s in common], [base[s]["cold_auc"][d] for s in common])
                    p = "n/a" if math.isnan(t["p_value"]) else f"{t['p_value']:.2g}"
                    cells.append(f"{t['mean_diff']:+.4f} ± {t['std_diff']:.4f} (p {p})")
                print(f"  {v} [{len(common)} seeds]: " + " | ".join(cells))
        rel = [(v, r["relevance"]) for v, ps in by.items() for r in ps.values() if "relevance" in r]
        if rel:
            print("\nattention mass on the relevant behaviours (mean over seeds and targets) vs their share:")
            for v in dict.fromkeys(v for v, _ in rel):
                vals = [x for vv, x in rel if vv == v]
                agg = {k: np.mean([m[k] for x in vals for m in x.values()])
                       for k in ("domain_mass", "domain_share", "item_mass", "item_share")}
                print(f"  {v}: step 1 {agg['domain_mass']:.3f} (share {agg['domain_share']:.3f}); "
                      f"step 2 {agg['item_mass']:.3f} (share {agg['item_share']:.3f})")


def _strength(world_label: str) -> float | None:
    """The mechanism strength of a world label (`mechanism` is the preset's 1.5), None for other worlds."""
    if world_label == "mechanism":
        return 1.5
    if world_label.startswith("mechanism-s") and "@" not in world_label:
        return float(world_label.removeprefix("mechanism-s"))
    return None


def plot_curve(path: str, out: str, model: str = "DACDR", baseline: str = "pool") -> None:
    """DACDR − pooling cold-start AUC (mean of the targets; mean ± std of the paired differences over seeds)
    against the mechanism's strength, with each step's attention mass on the relevant behaviours."""
    from dacdr.reporting.plots import plt

    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    points = []
    for w in sorted({r["world"] for r in rows if _strength(r["world"]) is not None}, key=_strength):
        a = {r["seed"]: r for r in rows if r["world"] == w and r["variant"] == model}
        b = {r["seed"]: r for r in rows if r["world"] == w and r["variant"] == baseline}
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        diff = [np.mean(list(a[s]["cold_auc"].values())) - np.mean(list(b[s]["cold_auc"].values())) for s in seeds]
        rel = [m for s in seeds for m in a[s].get("relevance", {}).values()]
        points.append((_strength(w), float(np.mean(diff)), float(np.std(diff, ddof=1)) if len(diff) > 1 else 0.0,
                       len(seeds), rel))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    x = [p[0] for p in points]
    ax.errorbar(x, [p[1] for p in points], yerr=[p[2] for p in points], marker="o", capsize=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("mechanism strength (0 = the plain world)")
    ax.set_ylabel(f"{model} − {baseline}: cold-start AUC (mean of targets)")
    ax.set_title(f"paired over seeds ({', '.join(str(p[3]) for p in points)} seeds)")
    for key, share, label in (("domain_mass", "domain_share", "step 1 on focus categories"),
                              ("item_mass", "item_share", "step 2 on the candidate's category")):
        ax2.plot(x, [np.mean([m[key] / m[share] for m in p[4]]) if p[4] else np.nan for p in points], marker="o",
                 label=label)
    ax2.axhline(1, color="grey", lw=0.8)
    ax2.set_xlabel("mechanism strength")
    ax2.set_ylabel("attention mass / share of those behaviours")
    ax2.set_title(f"{model}: where the attention goes (1 = uniform)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="demo")
    ap.add_argument("--variants", default="DACDR,pool")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="attention-study.jsonl")
    ap.add_argument("--runs", default="runs/attention-study")
    ap.add_argument("--data-root", default="data/attention-study")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, help="budget: epochs instead of the world's (recorded in the label)")
    ap.add_argument("--patience", type=int, help="budget: early-stopping patience instead of the world's")
    ap.add_argument("--source-rate", type=float, help="budget: share of source rows drawn as training samples")
    ap.add_argument("--weight-decay", type=float, help="budget: AdamW weight decay instead of the world's (0)")
    ap.add_argument("--report", help="print the tables of this JSONL file instead of training")
    ap.add_argument("--baseline", default="pool")
    ap.add_argument("--plot", help="with --report: write the mechanism curve to this PNG")
    args = ap.parse_args()
    if args.report and args.plot:
        plot_curve(args.report, args.plot, baseline=args.baseline)
    elif args.report:
        report(args.report, args.baseline)
    else:
        run(args)


if __name__ == "__main__":
    main()
