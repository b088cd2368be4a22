"""The synthetic cross-domain click world: a plausible generative story whose true click probability is known.

The world (topics, items, domains) is drawn once from the seed; users are then drawn in fixed blocks of
``_BLOCK_USERS`` users, each block from its own random stream, and written straight to Parquet. The data
therefore depends only on the config and the seed (not on ``users_per_part``), and memory stays bounded by
one block plus one row group whatever the number of users. See ``docs/synthetic.md`` for the story.

Usage::

    from dacdr.data.synthetic import generate
    generate("demo", "data/synthetic-demo", seed=0)

or ``python -m dacdr.data.synthetic demo data/synthetic-demo --seed 0``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import brentq

__all__ = [
    "BEHAVIOUR_TYPES",
    "MechanismConfig",
    "PRESETS",
    "SourceConfig",
    "SyntheticConfig",
    "TargetConfig",
    "focus_categories",
    "generate",
    "get_preset",
    "summarize",
]

BEHAVIOUR_TYPES = ("browse", "click", "cart", "purchase", "impression")
SOURCE_DOMAIN = "source"
DAY_SECONDS = 86_400
# Users per random stream. A constant (not a config field) so that the data never depends on how it is
# split into files; small enough that one block's arrays are a few MB even for heavy users.
_BLOCK_USERS = 250
# Users drawn (from their own streams) to solve the domain biases for the requested click rates.
_CALIBRATION_USERS = 20_000
# Rows buffered before a Parquet row group is written.
_ROW_GROUP_ROWS = 262_144

_INTERACTION_SCHEMA = pa.schema(
    [
        pa.field("user", pa.int64(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("item", pa.int64(), nullable=False),
        pa.field("behaviour", pa.string(), nullable=False),
        pa.field("label", pa.float64(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("p_true", pa.float64(), nullable=True),
        pa.field("p_transferable", pa.float64(), nullable=True),
        pa.field("p_plugin", pa.float64(), nullable=True),
    ]
)
# Gauss-Hermite nodes for E[sigmoid(mu + sd * Z)], Z ~ N(0, 1): the domain-specific taste integrated out.
# 48 nodes: the error is below 1e-9 for the sd of these worlds (sd <= 1; checked against 150 nodes in the tests).
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite.hermgauss(48)


# --------------------------------------------------------------------------------------------- config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """The rich source domain (the platform's main site): broad topics, a behaviour funnel."""

    page_type: str = Field("main_site", description="domain feature `page_type` of the source domain")
    business_line: str = Field("marketplace", description="domain feature `business_line` of the source domain")
    events_per_user: float = Field(
        55.0,
        gt=1,
        description="mean source events of a source user over the whole period; the count is "
        "1 + Poisson((mean - 1) * activity), so heavy users dominate as in real logs. 55 gives ~1M source rows "
        "at demo size and a 50-event sequence for a typical user",
    )
    click_rate: float = Field(
        0.12,
        gt=0,
        lt=1,
        description="share of source events that are a click or deeper (label 1); the rest are `browse` rows. "
        "Solved into a bias on the calibration sample. 0.12: browsing a marketplace clicks more often than an "
        "ad slot (the paper's source has 4.02%, used by the industrial preset)",
    )
    cart_rate: float = Field(
        0.25, gt=0, lt=1, description="share of clicks that go on to the cart (a typical add-to-cart rate)"
    )
    purchase_rate: float = Field(
        0.3, gt=0, lt=1, description="share of carts that end in a purchase (a typical cart conversion)"
    )
    personalisation: float = Field(
        0.8,
        ge=0,
        le=1,
        description="share of source events whose topic follows the user's own interest (search, browsing "
        "her favourite categories); the rest follow the site-wide topic mix. High: on the main site the "
        "user navigates herself",
    )
    focus_concentration: float = Field(
        5.0,
        gt=0,
        description="Dirichlet concentration of the source's topic mix: 5 = broad, every topic present with "
        "mildly different weights (the general marketplace)",
    )


class TargetConfig(_Strict):
    """One target domain: a display slot or page with its own topics, items, policy and click rate."""

    page_type: str = Field(description="domain feature `page_type` (e.g. feed, banner)")
    business_line: str = Field(
        description="domain feature `business_line`; targets with the same business line share part of "
        "their topic focus, which is what lets this feature generalise to a new domain"
    )
    ctr: float = Field(
        gt=0, lt=1, description="average click rate of the domain's impressions (solved into the domain bias)"
    )
    overlap: float = Field(gt=0, le=1, description="share of the domain's users who also have source history")
    reach: float = Field(gt=0, le=1, description="share of source users who visit this domain in the period")
    visit_rate: float = Field(
        0.25,
        gt=0,
        le=1,
        description="probability that a returning user of the domain visits it on a given day; 0.25 = about "
        "twice a week",
    )
    impressions_per_visit: float = Field(
        7.0,
        ge=1,
        description="mean impressions of one visit, scaled by the user's activity; 7 = one screen of the slot",
    )
    personalisation: float = Field(
        0.6,
        ge=0,
        le=1,
        description="share of impressions whose topic the domain's policy picks from the user's interest in the "
        "domain; the rest follow the domain's topic mix (inside a topic, items always by popularity). 0.6 "
        "for a recommendation feed; the presets give banners 0.4",
    )
    n_items: int = Field(
        1_000,
        ge=1,
        description="size of the domain's item pool, a focus-weighted subset of the catalogue (ignored with "
        "shared_item_pool); 1,000 = a fifth of the demo catalogue",
    )


class MechanismConfig(_Strict):
    """Selective relevance of the source history (off by default: today's worlds).

    With ``strength`` > 0 a target impression's click logit also depends on *which* of the user's recent
    source behaviours she has, not only on her topic histogram: a **domain-level** part (the mean style of
    her recent behaviours in the target's focus topics: their content, not their count) and an **item-level**
    part (how close the candidate is to her recent behaviours of the candidate's own category). Both are
    computed from the behaviours a model sees (the most recent ``window`` source events strictly before the
    impression), with more recent behaviours weighing more when ``recency_half_life`` is set, so the oracle
    stays exact.
    """

    strength: float = Field(
        0.0,
        ge=0,
        description="weight of the history-selective parts in the target click logit; 0 = the plain world "
        "(interest histogram, taste, quality), 1-2 = a world where what a person did recently in the "
        "relevant categories matters as much as her interests",
    )
    domain_weight: float = Field(
        1.0,
        ge=0,
        description="weight of the domain-level part: the recency-weighted mean style (a per-target direction "
        "in the item latent space, unit variance over items) of her behaviours in the target's focus topics; "
        "0 when she has none",
    )
    item_weight: float = Field(
        1.0,
        ge=0,
        description="weight of the item-level part: twice the recency-weighted mean cosine similarity of the "
        "candidate's style (latent minus its topic centroid) with her behaviours of the candidate's category; "
        "about +1 when they are of the candidate's brand, 0 when she has none",
    )
    recency_half_life: float | None = Field(
        None,
        gt=0,
        description="in behaviours: a behaviour's weight halves every this many more recent behaviours; "
        "None = every behaviour of the window weighs the same",
    )
    window: int = Field(
        50,
        ge=1,
        description="most recent source behaviours before an impression that the parts (and the plug-in "
        "reference) read: the models' default max_len, so that a model sees exactly what matters",
    )


def _default_targets() -> list[TargetConfig]:
    # Targets 2 and 3 share a business line, targets 1 and 3 a page type: domain features that generalise.
    return [
        TargetConfig(page_type="feed", business_line="fashion", ctr=0.06, overlap=0.85, reach=0.35),
        TargetConfig(
            page_type="banner", business_line="electronics", ctr=0.08, overlap=0.8, reach=0.3, personalisation=0.4
        ),
        TargetConfig(page_type="feed", business_line="electronics", ctr=0.07, overlap=0.9, reach=0.3),
    ]


class SyntheticConfig(_Strict):
    """Every parameter of the synthetic world. Defaults give the `demo` world."""

    name: str = Field("synthetic", description="dataset name written to dataset.json")
    n_users: int = Field(20_000, ge=1, description="people in the world (with or without source history)")
    n_days: int = Field(
        8,
        ge=2,
        description="days in the log; the last one is the test day (P1 time split). 8 = a week of training "
        "history plus the test day; the paper's log has 11 (industrial preset)",
    )
    source_share: float = Field(
        0.9,
        gt=0,
        le=1,
        description="share of people with source history; the others only ever visit targets, so a target's "
        "overlap can be below 1. 0.9: the source is the platform's main site",
    )
    new_user_share: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="share of a target's users with source history whose first visit to the target is on the "
        "test day: the cold-start users of the test set. 0.2 makes them about half of the test day's rows, "
        "enough for a stable cold-start AUC",
    )
    n_topics: int = Field(
        24, ge=2, description="latent topics K; an item's topic is its `category`. 24 = a shop's top categories"
    )
    latent_dim: int = Field(
        16, ge=1, description="dimension of item latent vectors and user taste vectors (a typical embedding size)"
    )
    n_items: int = Field(5_000, ge=1, description="items in the catalogue (all shown in the source domain)")
    brands_per_topic: int = Field(
        20, ge=1, description="brands per topic, with Zipf market shares; every brand belongs to one topic"
    )
    popularity_sigma: float = Field(
        1.5,
        ge=0,
        description="sigma of the lognormal item popularity: 1.5 gives a heavy tail (the top 1% of items get "
        "15-20% of the events, the top 10% about 60%)",
    )
    quality_popularity_corr: float = Field(
        0.5,
        ge=-1,
        le=1,
        description="correlation of an item's appeal (a click bonus for everyone) with its log popularity: "
        "popular items are popular partly, not only, because they are good",
    )
    brand_latent_noise: float = Field(
        0.6,
        ge=0,
        description="spread of a brand's latent offset around its topic centroid (unit spread): brands have "
        "styles, yet a topic's items still resemble each other",
    )
    item_latent_noise: float = Field(
        0.6, ge=0, description="spread of an item's latent vector around its brand: items differ within a brand"
    )
    interest_concentration: float = Field(
        0.1,
        gt=0,
        description="Dirichlet concentration of a user's topic interests; 0.1 over 24 topics gives ~3 topics "
        "above 10% and ~46% on the favourite one (sparse interests)",
    )
    interest_smoothing: float = Field(
        0.5,
        gt=0,
        description="s in the topic affinity log(K * interest + s) - log(1 + s): zero at uniform interest; "
        "bounds how much a topic of no interest suppresses a click (by log(s / (1 + s)) = -1.1 for 0.5) "
        "while a favourite topic can add up to log((K + s) / (1 + s))",
    )
    transferable_share: float = Field(
        0.6,
        ge=0,
        le=1,
        description="share of the variance of a user's taste that is the same in every domain; the rest is "
        "specific to each domain and cannot be inferred from the source (it keeps the achievable AUC of a "
        "cold-start model below the oracle). 0.6: a person is mostly the same person everywhere",
    )
    interest_weight: float = Field(
        0.6,
        ge=0,
        description="weight of the topic affinity in the click logit. With taste_weight 0.5 and quality_weight "
        "0.3 it puts the demo oracle AUC of cold-start users at 0.75-0.78: headroom above the 0.65-0.70 the "
        "best models reach on real logs (paper Table 2), without making clicks near-deterministic",
    )
    taste_weight: float = Field(
        0.5,
        ge=0,
        description="weight of taste . latent (unit variance) in the click logit; a bit below the topic term: "
        "what a user likes is first which kind of thing, then which style",
    )
    quality_weight: float = Field(
        0.3,
        ge=0,
        description="weight of the item's appeal (unit variance) in the click logit; small, so that a "
        "popularity-only model is clearly beaten by a personalised one",
    )
    user_bias_std: float = Field(
        0.3,
        ge=0,
        description="std of a person's click propensity (logit), the same in every domain; 0.3 is a modest "
        "spread (odds x/÷ 1.35)",
    )
    activity_sigma: float = Field(
        1.0,
        ge=0,
        description="sigma of the lognormal (mean 1) activity multiplier of a person's events and impressions: "
        "a heavy tail (median 0.6x the mean, top 1% above 6x), the same person being heavy everywhere",
    )
    funnel_sharpness: float = Field(
        1.5,
        ge=0,
        description="slope on relevance of the cart and purchase steps relative to the click step: deeper "
        "behaviours depend more on relevance, so they tell more about the user; 1.5 keeps them clearly more "
        "telling without making a purchase a certainty",
    )
    focus_topics: int = Field(
        3,
        ge=1,
        description="topics a target's own focus and a business line's focus concentrate on: a slot or business "
        "line covers a handful of categories (e.g. clothing, shoes, bags)",
    )
    focus_floor: float = Field(
        0.1,
        ge=0,
        le=1,
        description="share of a target's topic mix spread uniformly over all topics: every topic can appear, "
        "the focus dominates",
    )
    business_line_focus_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of a target's focus inherited from its business line; the rest is its own (two "
        "slots of one business line are alike, not identical)",
    )
    shared_item_pool: bool = Field(
        False, description="every domain shows the whole catalogue instead of its own focus-weighted pool"
    )
    users_per_part: int = Field(
        50_000,
        ge=1,
        description="users per interactions/part-NNNNN.parquet file (rounded up to whole "
        f"blocks of {_BLOCK_USERS}); does not change the data",
    )
    source: SourceConfig = Field(default_factory=SourceConfig, description="the source domain")
    mechanism: MechanismConfig = Field(
        default_factory=MechanismConfig, description="selective relevance of the history (off by default)"
    )
    targets: list[TargetConfig] = Field(
        default_factory=_default_targets, min_length=1, description="target domains target_1 .. target_k"
    )

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        for t, tgt in enumerate(self.targets, start=1):
            q = _outsider_rate(self, tgt)
            if q > 1:
                raise ValueError(
                    f"target_{t}: overlap {tgt.overlap} with reach {tgt.reach} needs more people without source "
                    f"history than source_share={self.source_share} leaves; lower reach or source_share"
                )
            if not self.shared_item_pool and tgt.n_items > self.n_items:
                raise ValueError(f"target_{t}: n_items {tgt.n_items} > catalogue size {self.n_items}")
        if self.focus_topics > self.n_topics:
            raise ValueError("focus_topics must not exceed n_topics")
        return self

    @property
    def target_names(self) -> list[str]:
        return [f"target_{t}" for t in range(1, len(self.targets) + 1)]


def _outsider_rate(cfg: SyntheticConfig, tgt: TargetConfig) -> float:
    """Probability that a person without source history visits ``tgt``, solved from its overlap and reach."""
    if tgt.overlap >= 1:
        return 0.0
    if cfg.source_share >= 1:
        return math.inf
    return tgt.reach * cfg.source_share * (1 - tgt.overlap) / (tgt.overlap * (1 - cfg.source_share))


PRESETS: dict[str, SyntheticConfig] = {
    # Unit tests: a few hundred users per target, ~40k rows, well under a second.
    "tiny": SyntheticConfig(
        name="synthetic-tiny",
        n_users=800,
        n_days=5,
        n_items=600,
        brands_per_topic=5,
        n_topics=12,
        latent_dim=8,
        users_per_part=400,
        source=SourceConfig(events_per_user=30),
        targets=[
            TargetConfig(
                page_type="feed",
                business_line="fashion",
                ctr=0.08,
                overlap=0.85,
                reach=0.4,
                visit_rate=0.4,
                impressions_per_visit=5,
                n_items=200,
            ),
            TargetConfig(
                page_type="banner",
                business_line="electronics",
                ctr=0.1,
                overlap=0.8,
                reach=0.4,
                visit_rate=0.4,
                impressions_per_visit=5,
                n_items=100,
                personalisation=0.4,
            ),
            TargetConfig(
                page_type="feed",
                business_line="electronics",
                ctr=0.09,
                overlap=0.9,
                reach=0.4,
                visit_rate=0.4,
                impressions_per_visit=5,
                n_items=200,
            ),
        ],
    ),
    # The main command's world: the defaults.
    "demo": SyntheticConfig(name="synthetic-demo"),
    # Table 1 of the paper scaled down: 11 days, overlaps 94/69/78 %, CTRs 1.48/2.19/1.85 %, source CTR
    # 4.02 %, target user counts in the ratio 2.2 : 4.5 : 1.5 and pools in the ratio 210K : 22K : 491K,
    # impressions per user ~10 / 9 / 15. Sized so that the cold-start test day holds ~550 / 1,300 / 400
    # clicks (an AUC standard error near 0.01-0.02) and ~800K target training rows, which `dacdr bench`
    # trains every model on within an hour on 2 cores.
    "industrial": SyntheticConfig(
        name="synthetic-industrial",
        n_users=100_000,
        n_days=11,
        source_share=0.8,
        n_items=40_000,
        source=SourceConfig(events_per_user=25, click_rate=0.0402),
        targets=[
            TargetConfig(
                page_type="feed",
                business_line="fashion",
                ctr=0.0148,
                overlap=0.94,
                reach=0.32,
                visit_rate=0.15,
                impressions_per_visit=6,
                n_items=4_200,
            ),
            TargetConfig(
                page_type="banner",
                business_line="electronics",
                ctr=0.0219,
                overlap=0.69,
                reach=0.48,
                visit_rate=0.13,
                impressions_per_visit=6,
                n_items=440,
                personalisation=0.4,
            ),
            TargetConfig(
                page_type="feed",
                business_line="electronics",
                ctr=0.0185,
                overlap=0.78,
                reach=0.18,
                visit_rate=0.22,
                impressions_per_visit=6,
                n_items=9_800,
            ),
        ],
    ),
    # Selective relevance (docs/synthetic.md#the-mechanism-world): the demo world plus history parts that only
    # a model which picks the right behaviours can read (domain focus set, candidate's category, recency).
    "mechanism": SyntheticConfig(
        name="synthetic-mechanism",
        n_users=12_000,
        mechanism=MechanismConfig(strength=1.5, recency_half_life=15.0),
    ),
    # Throughput and memory benchmark: ~25M rows in 10 parts.
    "scale": SyntheticConfig(
        name="synthetic-scale",
        n_users=500_000,
        n_items=200_000,
        source=SourceConfig(events_per_user=45),
        targets=[t.model_copy(update={"n_items": 20_000}) for t in _default_targets()],
    ),
}


def get_preset(name: str, **overrides: Any) -> SyntheticConfig:
    """The preset ``name`` with fields replaced by ``overrides`` (validated)."""
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic preset {name!r}; valid presets: {', '.join(PRESETS)}")
    if not overrides:
        return PRESETS[name]
    merged = PRESETS[name].model_dump()
    for key, value in overrides.items():
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = {**merged[key], **value}  # e.g. source={"click_rate": 0.05} keeps the other fields
        merged[key] = value
    return SyntheticConfig.model_validate(merged)


# Unit tests of the mechanism: the tiny world, more people, two targets, a strong and selective history term.
PRESETS["mechanism-tiny"] = PRESETS["tiny"].model_validate(PRESETS["tiny"].model_dump() | {
    "name": "synthetic-mechanism-tiny",
    "n_users": 1_500,
    "users_per_part": 750,
    "mechanism": MechanismConfig(strength=3.0, recency_half_life=15.0, window=30).model_dump(),
    "targets": [
        TargetConfig(page_type=page, business_line=line, ctr=0.1, overlap=0.9, reach=0.5, visit_rate=0.4,
                     impressions_per_visit=5, n_items=200).model_dump()
        for page, line in (("feed", "fashion"), ("banner", "electronics"))
    ],
})


# ---------------------------------------------------------------------------------------------- world


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def expected_sigmoid(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """E[sigmoid(mean + sd * Z)] for Z ~ N(0, 1), by Gauss-Hermite quadrature (see ``_GH_NODES``)."""
    z = math.sqrt(2.0) * _GH_NODES
    return _sigmoid(mean[:, None] + sd[:, None] * z[None, :]) @ _GH_WEIGHTS / math.sqrt(math.pi)


def _sparse_dirichlet(rng: np.random.Generator, alpha: float, size: tuple[int, int]) -> np.ndarray:
    """Dirichlet rows computed in log space: plain gamma draws underflow to 0 for small ``alpha``."""
    log_g = np.log(rng.standard_gamma(alpha + 1.0, size=size)) + np.log(rng.random(size)) / alpha
    log_g -= log_g.max(axis=1, keepdims=True)
    g = np.exp(log_g)
    return g / g.sum(axis=1, keepdims=True)


@dataclass
class _Sampler:
    """Draws items of one domain: topic first, then an item of that topic proportionally to popularity."""

    items: np.ndarray  # pool item ids sorted by (topic, id)
    cum: np.ndarray  # topic + within-topic cumulative popularity share, increasing
    start: np.ndarray  # first pool index of each topic
    stop: np.ndarray  # one past the last pool index of each topic
    has_topic: np.ndarray  # bool per topic: the pool holds an item of it

    @classmethod
    def build(cls, pool: np.ndarray, topic: np.ndarray, weight: np.ndarray, k: int) -> _Sampler:
        pool = pool[np.lexsort((pool, topic[pool]))]
        t = topic[pool]
        counts = np.bincount(t, minlength=k)
        stop = np.cumsum(counts)
        start = stop - counts
        w = weight[pool]
        cw = np.cumsum(w)
        before = np.concatenate(([0.0], cw))[start]  # cumulative weight before each topic's segment
        total = np.bincount(t, weights=w, minlength=k)
        within = (cw - before[t]) / total[t]
        within[stop[counts > 0] - 1] = 1.0  # exact segment ends, whatever the rounding
        return cls(pool, t + within, start, stop, counts > 0)

    def draw(self, rng: np.random.Generator, topics: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.cum, topics + rng.random(topics.size), side="right")
        idx = np.clip(idx, self.start[topics], self.stop[topics] - 1)
        return self.items[idx]


@dataclass
class _World:
    cfg: SyntheticConfig
    domains: list[str]  # source first
    item_topic: np.ndarray
    item_brand: np.ndarray
    item_quality: np.ndarray  # unit variance
    item_latent: np.ndarray  # scaled so that taste . latent has unit variance
    focus: np.ndarray  # (n_domains, K), rows sum to 1
    samplers: list[_Sampler]
    outsider_rate: np.ndarray  # per target: visit probability of a person without source history
    bias: dict[str, float]  # click bias per domain, plus "cart" and "purchase"
    focus_set: np.ndarray  # (n_domains, K) bool: a target's focus topics (the mechanism's relevant behaviours)
    item_style: np.ndarray  # (n_domains, n_items): latent . the domain's style direction (unit variance)
    item_residual: np.ndarray  # (n_items, dim): latent minus its topic centroid, unit length


def _build_world(cfg: SyntheticConfig, seed: int) -> _World:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    k, dim = cfg.n_topics, cfg.latent_dim
    # Items: topic sizes vary mildly; brands of a topic have Zipf-like market shares.
    topic_share = rng.dirichlet(np.full(k, 3.0))
    item_topic = rng.choice(k, size=cfg.n_items, p=topic_share)
    brand_share = 1.0 / np.arange(1, cfg.brands_per_topic + 1)
    brand_share /= brand_share.sum()
    item_brand = item_topic * cfg.brands_per_topic + rng.choice(cfg.brands_per_topic, cfg.n_items, p=brand_share)
    log_pop = rng.normal(0.0, 1.0, cfg.n_items)
    popularity = np.exp(cfg.popularity_sigma * log_pop)
    rho = cfg.quality_popularity_corr
    quality = rho * log_pop + math.sqrt(1 - rho * rho) * rng.normal(0.0, 1.0, cfg.n_items)
    centroid = rng.normal(0.0, 1.0, (k, dim))
    brand_offset = rng.normal(0.0, cfg.brand_latent_noise, (k * cfg.brands_per_topic, dim))
    latent = (
        centroid[item_topic] + brand_offset[item_brand] + rng.normal(0.0, cfg.item_latent_noise, (cfg.n_items, dim))
    )
    # Taste vectors have covariance I / dim, so this scaling gives taste . latent unit variance.
    latent /= math.sqrt(1.0 + cfg.brand_latent_noise**2 + cfg.item_latent_noise**2)

    # Domains: the source is broad; a target mixes its business line's focus with its own.
    def peaked() -> np.ndarray:
        f = np.zeros(k)
        f[rng.choice(k, cfg.focus_topics, replace=False)] = rng.dirichlet(np.full(cfg.focus_topics, 2.0))
        return f

    lines: dict[str, np.ndarray] = {}
    focus = [rng.dirichlet(np.full(k, cfg.source.focus_concentration))]
    for tgt in cfg.targets:
        if tgt.business_line not in lines:
            lines[tgt.business_line] = peaked()
        share = cfg.business_line_focus_share
        own = share * lines[tgt.business_line] + (1 - share) * peaked()
        focus.append(cfg.focus_floor / k + (1 - cfg.focus_floor) * own)
    focus_arr = np.stack(focus)

    # The mechanism's parameters come from their own stream, so that the plain worlds stay as they were.
    mech_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
    direction = mech_rng.normal(0.0, 1.0, (len(focus_arr), dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    style = direction @ latent.T
    style /= style.std(axis=1, keepdims=True)
    residual = latent - (centroid / math.sqrt(1.0 + cfg.brand_latent_noise**2 + cfg.item_latent_noise**2))[item_topic]
    residual /= np.maximum(np.linalg.norm(residual, axis=1, keepdims=True), 1e-12)
    focus_set = np.zeros(focus_arr.shape, dtype=bool)
    top = np.argsort(-focus_arr, axis=1, kind="stable")[:, : cfg.focus_topics]
    np.put_along_axis(focus_set, top, True, axis=1)

    samplers = [_Sampler.build(np.arange(cfg.n_items), item_topic, popularity, k)]
    for t, tgt in enumerate(cfg.targets, start=1):
        if cfg.shared_item_pool:
            pool = np.arange(cfg.n_items)
        else:
            # A slot carries mostly items of its topics; within a topic, popular items are more likely listed.
            w = focus_arr[t][item_topic] * np.sqrt(popularity)
            pool = rng.choice(cfg.n_items, size=tgt.n_items, replace=False, p=w / w.sum())
        samplers.append(_Sampler.build(pool, item_topic, popularity, k))

    return _World(
        cfg=cfg,
        domains=[SOURCE_DOMAIN, *cfg.target_names],
        item_topic=item_topic,
        item_brand=item_brand,
        item_quality=quality,
        item_latent=latent,
        focus=focus_arr,
        samplers=samplers,
        outsider_rate=np.array([_outsider_rate(cfg, t) for t in cfg.targets]),
        bias={},
        focus_set=focus_set,
        item_style=style,
        item_residual=residual,
    )


# ---------------------------------------------------------------------------------------------- users


@dataclass
class _Events:
    """Rows of one domain for one block before labels are drawn."""

    user: np.ndarray  # index within the block
    item: np.ndarray
    timestamp: np.ndarray
    logit: np.ndarray  # relevance without the domain bias
    # Targets only: the logit's part that the source can reveal, the sd of the part it cannot (the domain's
    # own taste), and the histogram plug-in's score.
    transferable: np.ndarray | None = None
    own_sd: np.ndarray | None = None
    plugin: np.ndarray | None = None


@dataclass
class _History:
    """A block's source events sorted by (user, time), ties in draw order (as the sample builder sorts)."""

    user: np.ndarray
    timestamp: np.ndarray
    item: np.ndarray

    def window(self, user: np.ndarray, timestamp: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """[n, size] event positions of each row's ``size`` most recent events strictly before its timestamp
        (most recent last, as the models' sequences), and their validity mask."""
        span = int(max(self.timestamp.max(initial=0), timestamp.max(initial=0))) + 1
        key = self.user.astype(np.int64) * span + self.timestamp
        end = np.searchsorted(key, user.astype(np.int64) * span + timestamp, side="left")
        start = np.maximum(np.searchsorted(key, user.astype(np.int64) * span, side="left"), end - size)
        pos = end[:, None] - size + np.arange(size)[None, :]
        valid = pos >= start[:, None]
        return np.where(valid, pos, 0), valid


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Row-wise sum(w * v) / sum(w), 0 for a row without weight."""
    total = weights.sum(axis=1)
    return np.where(total > 0, (weights * values).sum(axis=1) / np.maximum(total, 1e-300), 0.0)


def _history_terms(
    world: _World, hist: _History, d: int, user: np.ndarray, timestamp: np.ndarray, item: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The mechanism's logit term and the histogram plug-in's score of target ``d``'s impressions.

    Both read the ``mechanism.window`` most recent source events before each impression. The plug-in is the
    world's own interest term with the interest replaced by the smoothed topic shares of that window (a
    Dirichlet posterior mean), plus the item's appeal: the best a model reading only "how much of each
    topic" could do without knowing the person's taste.
    """
    cfg, mech = world.cfg, world.cfg.mechanism
    k = cfg.n_topics
    pos, valid = hist.window(user, timestamp, mech.window)
    ev_item = hist.item[pos] if hist.item.size else np.zeros(pos.shape, np.int64)
    ev_topic = world.item_topic[ev_item]
    counts = np.zeros((user.size, k))
    np.add.at(counts, (np.broadcast_to(np.arange(user.size)[:, None], pos.shape)[valid], ev_topic[valid]), 1.0)
    a = cfg.interest_concentration
    share = (counts + a) / (counts.sum(axis=1, keepdims=True) + k * a)
    eff = share * world.focus[d][None]
    eff /= eff.sum(axis=1, keepdims=True)
    smooth = cfg.interest_smoothing
    cand_topic = world.item_topic[item]
    affinity = np.log(k * eff[np.arange(user.size), cand_topic] + smooth) - math.log(1 + smooth)
    plugin = cfg.interest_weight * affinity + cfg.quality_weight * world.item_quality[item]
    if mech.strength == 0:
        return np.zeros(user.size), plugin
    rank = mech.window - 1 - np.arange(mech.window)  # 0 = the most recent behaviour of a full window
    w = np.broadcast_to(0.5 ** (rank / mech.recency_half_life) if mech.recency_half_life else np.ones(mech.window),
                        pos.shape) * valid
    focus_w = w * world.focus_set[d][ev_topic]
    domain_part = _weighted_mean(world.item_style[d][ev_item], focus_w)
    same_w = w * (ev_topic == cand_topic[:, None])
    similarity = np.einsum("nwj,nj->nw", world.item_residual[ev_item], world.item_residual[item])
    item_part = 2.0 * _weighted_mean(similarity, same_w)
    return mech.strength * (mech.domain_weight * domain_part + mech.item_weight * item_part), plugin


def _topic_draw(rng: np.random.Generator, mix: np.ndarray, user: np.ndarray) -> np.ndarray:
    """One topic per row from the row's user's topic distribution (inverse CDF, vectorised)."""
    cum = np.cumsum(mix, axis=1)
    cum /= cum[:, -1:]
    u = rng.random(user.size)
    topic = (u[:, None] >= cum[user]).sum(axis=1)
    return np.minimum(topic, mix.shape[1] - 1)


def _draw_block(world: _World, rng: np.random.Generator, n: int) -> list[_Events]:
    """Draw ``n`` people and all their events; returns one ``_Events`` per domain (source first).

    Every random array has a size fixed by ``n`` or by earlier draws, so the stream is a pure function of
    the block's seed.
    """
    cfg = world.cfg
    k, dim, n_dom = cfg.n_topics, cfg.latent_dim, len(world.domains)
    last_day = cfg.n_days - 1

    # People.
    has_source = rng.random(n) < cfg.source_share
    sig = cfg.activity_sigma
    activity = rng.lognormal(-0.5 * sig * sig, sig, n)
    interest = _sparse_dirichlet(rng, cfg.interest_concentration, (n, k))
    user_bias = rng.normal(0.0, cfg.user_bias_std, n)
    shared_taste = rng.normal(0.0, 1.0 / math.sqrt(dim), (n, dim))
    own_taste = rng.normal(0.0, 1.0 / math.sqrt(dim), (n_dom, n, dim))
    rho = cfg.transferable_share
    taste = math.sqrt(rho) * shared_taste[None] + math.sqrt(1 - rho) * own_taste
    # Interest inside a domain: the person's interest re-weighted by the domain's focus.
    eff = interest[None] * world.focus[:, None, :]
    eff /= np.maximum(eff.sum(axis=2, keepdims=True), 1e-300)  # all-zero only if focus_floor == 0
    smooth = cfg.interest_smoothing
    affinity = np.log(k * eff + smooth) - math.log(1 + smooth)  # (n_dom, n, K)

    def relevance(d: int, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        taste_term = np.einsum("ij,ij->i", taste[d][user], world.item_latent[item])
        return (
            cfg.interest_weight * affinity[d, user, world.item_topic[item]]
            + cfg.taste_weight * taste_term
            + cfg.quality_weight * world.item_quality[item]
            + user_bias[user]
        )

    def exposures(d: int, personalisation: float, user: np.ndarray) -> np.ndarray:
        sampler = world.samplers[d]
        mix = personalisation * eff[d] + (1 - personalisation) * world.focus[d][None]
        # A topic absent from the pool cannot be shown; the 1e-12 keeps every row a distribution.
        mix = (mix + 1e-12) * sampler.has_topic
        return sampler.draw(rng, _topic_draw(rng, mix, user))

    out: list[_Events] = []

    # Source: a heavy-tailed number of events spread over all days, the first one before the test day.
    src = cfg.source
    n_events = np.where(has_source, 1 + rng.poisson((src.events_per_user - 1) * activity), 0)
    user = np.repeat(np.arange(n), n_events)
    day = rng.integers(0, cfg.n_days, user.size)
    first = np.cumsum(n_events) - n_events
    first = first[n_events > 0]
    day[first] = rng.integers(0, last_day, first.size)  # every source user has history before the test day
    timestamp = day * DAY_SECONDS + rng.integers(0, DAY_SECONDS, user.size)
    item = exposures(0, src.personalisation, user)
    out.append(_Events(user, item, timestamp, relevance(0, user, item)))
    order = np.lexsort((timestamp, user))
    hist = _History(user[order], timestamp[order], item[order])
    own_scale = cfg.taste_weight * math.sqrt(1 - rho)

    # Targets: visitors are drawn from people with and without source history so that the share with
    # history is the requested overlap; some source users arrive on the test day (cold start).
    for t, tgt in enumerate(cfg.targets, start=1):
        visits = rng.random(n) < np.where(has_source, tgt.reach, world.outsider_rate[t - 1])
        newcomer = visits & has_source & (rng.random(n) < cfg.new_user_share)
        returning = visits & ~newcomer
        days = rng.random((n, cfg.n_days)) < tgt.visit_rate
        none = ~days.any(axis=1)
        days[none, rng.integers(0, cfg.n_days, n)[none]] = True  # a visitor visits at least once
        days &= returning[:, None]
        days[newcomer, last_day] = True
        per_visit = 1 + rng.poisson((tgt.impressions_per_visit - 1) * activity[:, None], (n, cfg.n_days))
        counts = np.where(days, per_visit, 0)
        flat = counts.ravel()
        user = np.repeat(np.repeat(np.arange(n), cfg.n_days), flat)
        day = np.repeat(np.tile(np.arange(cfg.n_days), n), flat)
        timestamp = day * DAY_SECONDS + rng.integers(0, DAY_SECONDS, user.size)
        item = exposures(t, tgt.personalisation, user)
        logit = relevance(t, user, item)
        mechanism, plugin = _history_terms(world, hist, t, user, timestamp, item)
        own_term = own_scale * np.einsum("ij,ij->i", own_taste[t][user], world.item_latent[item])
        # own_taste ~ N(0, I / dim): the own-taste term is N(0, own_scale^2 |latent|^2 / dim) before it is seen.
        own_sd = own_scale * np.linalg.norm(world.item_latent[item], axis=1) / math.sqrt(dim)
        out.append(_Events(user, item, timestamp, logit + mechanism, logit + mechanism - own_term, own_sd, plugin))
    return out


def _block_rng(seed: int, stream: int, block: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, block)))


def _solve_bias(logit: np.ndarray, rate: float, weight: np.ndarray | None = None) -> float:
    """The bias b with weighted mean sigmoid(b + logit) == rate."""
    w = np.ones_like(logit) if weight is None else weight
    total = w.sum()
    return float(brentq(lambda b: float((w * _sigmoid(b + logit)).sum() / total) - rate, -30.0, 30.0))


def _calibrate(world: _World, seed: int) -> None:
    """Solve the domain and funnel biases so that the expected rates equal the configured ones.

    Uses its own random streams (not the data's), so the biases do not depend on ``n_users`` or chunking.
    """
    cfg = world.cfg
    per_domain: list[list[np.ndarray]] = [[] for _ in world.domains]
    for b in range(math.ceil(_CALIBRATION_USERS / _BLOCK_USERS)):
        for d, ev in enumerate(_draw_block(world, _block_rng(seed, 2, b), _BLOCK_USERS)):
            per_domain[d].append(ev.logit)
    bias: dict[str, float] = {}
    for d, name in enumerate(world.domains):
        logit = np.concatenate(per_domain[d])
        if logit.size == 0:
            raise ValueError(f"{name}: no events in the calibration sample; raise reach or activity")
        rate = cfg.source.click_rate if d == 0 else cfg.targets[d - 1].ctr
        bias[name] = _solve_bias(logit, rate)
    src = np.concatenate(per_domain[0])
    p_click = _sigmoid(bias[SOURCE_DOMAIN] + src)
    kappa = cfg.funnel_sharpness
    bias["cart"] = _solve_bias(kappa * src, cfg.source.cart_rate, p_click)
    p_cart = _sigmoid(bias["cart"] + kappa * src)
    bias["purchase"] = _solve_bias(kappa * src, cfg.source.purchase_rate, p_click * p_cart)
    world.bias = bias


def _block_table(world: _World, rng: np.random.Generator, first_user: int, n: int) -> pa.Table:
    """All rows of users ``first_user .. first_user + n - 1``, sorted by (user, timestamp)."""
    cfg = world.cfg
    events = _draw_block(world, rng, n)
    users, domains, items, behaviours, labels, stamps, p_true = [], [], [], [], [], [], []

    src = events[0]
    kappa = cfg.funnel_sharpness
    m = src.user.size
    clicked = rng.random(m) < _sigmoid(world.bias[SOURCE_DOMAIN] + src.logit)
    carted = clicked & (rng.random(m) < _sigmoid(world.bias["cart"] + kappa * src.logit))
    bought = carted & (rng.random(m) < _sigmoid(world.bias["purchase"] + kappa * src.logit))
    users.append(src.user)
    domains.append(np.zeros(m, np.int8))
    items.append(src.item)
    behaviours.append(clicked.astype(np.int8) + carted + bought)  # 0 browse .. 3 purchase
    labels.append(clicked.astype(np.float64))
    stamps.append(src.timestamp)
    p_true.append(np.full(m, np.nan))
    p_transferable, p_plugin = [np.full(m, np.nan)], [np.full(m, np.nan)]

    for d in range(1, len(world.domains)):
        ev = events[d]
        p = _sigmoid(world.bias[world.domains[d]] + ev.logit)
        users.append(ev.user)
        domains.append(np.full(ev.user.size, d, np.int8))
        items.append(ev.item)
        behaviours.append(np.full(ev.user.size, 4, np.int8))
        labels.append((rng.random(ev.user.size) < p).astype(np.float64))
        stamps.append(ev.timestamp)
        p_true.append(p)
        bias = world.bias[world.domains[d]]
        p_transferable.append(expected_sigmoid(bias + ev.transferable, ev.own_sd))
        p_plugin.append(_sigmoid(bias + ev.plugin))

    user = np.concatenate(users)
    timestamp = np.concatenate(stamps)
    order = np.lexsort((timestamp, user))
    p = np.concatenate(p_true)[order]
    references = [np.concatenate(col)[order] for col in (p_transferable, p_plugin)]
    return pa.Table.from_arrays(
        [
            pa.array(user[order] + first_user, pa.int64()),
            _strings(world.domains, np.concatenate(domains)[order]),
            pa.array(np.concatenate(items)[order], pa.int64()),
            _strings(BEHAVIOUR_TYPES, np.concatenate(behaviours)[order]),
            pa.array(np.concatenate(labels)[order], pa.float64()),
            pa.array(timestamp[order], pa.int64()),
            pa.array(p, pa.float64(), mask=np.isnan(p)),
            *(pa.array(r, pa.float64(), mask=np.isnan(r)) for r in references),
        ],
        schema=_INTERACTION_SCHEMA,
    )


def _strings(values: Any, codes: np.ndarray) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(list(values))).cast(pa.string())


# ------------------------------------------------------------------------------------------- writing


def _descriptor(world: _World, seed: int) -> dict[str, Any]:
    cfg = world.cfg
    return {
        "schema_version": 1,
        "name": cfg.name,
        "task": "ctr",
        "label_range": [0, 1],
        "source_domain": SOURCE_DOMAIN,
        "target_domains": cfg.target_names,
        "item_features": ["category", "brand"],
        "domain_features": ["page_type", "business_line"],
        "behaviour_types": list(BEHAVIOUR_TYPES),
        "test_start": (cfg.n_days - 1) * DAY_SECONDS,
        "has_timestamps": True,
        "generator": {
            "generator": "dacdr.data.synthetic",
            "seed": seed,
            "config": cfg.model_dump(mode="json"),
            # Derived constants (solved from the config), recorded for reproducibility; never a model input.
            "calibrated_bias": {key: round(v, 6) for key, v in world.bias.items()},
        },
    }


def _write_static(world: _World, root: Path) -> None:
    cfg = world.cfg
    page = [cfg.source.page_type, *(t.page_type for t in cfg.targets)]
    line = [cfg.source.business_line, *(t.business_line for t in cfg.targets)]
    domains = pa.table(
        {
            "domain": pa.array(world.domains, pa.string()),
            "role": pa.array(["source"] + ["target"] * len(cfg.targets), pa.string()),
            "page_type": pa.array(page, pa.string()),
            "business_line": pa.array(line, pa.string()),
        }
    )
    pq.write_table(domains, root / "domains.parquet")
    item_ids, domain_codes = [], []
    for d, sampler in enumerate(world.samplers):
        ids = np.sort(sampler.items)
        item_ids.append(ids)
        domain_codes.append(np.full(ids.size, d, np.int8))
    ids = np.concatenate(item_ids)
    category = np.array([f"cat_{t:02d}" for t in range(cfg.n_topics)], dtype=object)
    n_brands = cfg.n_topics * cfg.brands_per_topic
    brand = np.array([f"brand_{b:04d}" for b in range(n_brands)], dtype=object)
    items = pa.table(
        {
            "item": pa.array(ids, pa.int64()),
            "domain": _strings(world.domains, np.concatenate(domain_codes)),
            "category": _strings(category, world.item_topic[ids]),
            "brand": _strings(brand, world.item_brand[ids]),
        }
    )
    pq.write_table(items, root / "items.parquet")


def _write_interactions(world: _World, root: Path, seed: int) -> None:
    cfg = world.cfg
    folder = root / "interactions"
    folder.mkdir()
    n_blocks = math.ceil(cfg.n_users / _BLOCK_USERS)
    blocks_per_part = max(1, math.ceil(cfg.users_per_part / _BLOCK_USERS))
    for part, first_block in enumerate(range(0, n_blocks, blocks_per_part)):
        with pq.ParquetWriter(folder / f"part-{part:05d}.parquet", _INTERACTION_SCHEMA) as writer:
            pending: list[pa.Table] = []
            rows = 0
            for b in range(first_block, min(first_block + blocks_per_part, n_blocks)):
                first_user = b * _BLOCK_USERS
                n = min(_BLOCK_USERS, cfg.n_users - first_user)
                table = _block_table(world, _block_rng(seed, 1, b), first_user, n)
                pending.append(table)
                rows += table.num_rows
                if rows >= _ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(pending), row_group_size=rows)
                    pending, rows = [], 0
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=max(rows, 1))


def generate(config: SyntheticConfig | str, out_dir: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Generate the synthetic world ``config`` (a config or a preset name) into ``out_dir``.

    Writes the layout of docs/data-format.md into a temporary sibling directory and renames it into place
    at the end, so ``out_dir`` is either absent/old or complete. Refuses a non-empty ``out_dir`` unless
    ``overwrite``. The data is a pure function of (config, seed). Returns ``out_dir``.
    """
    cfg = get_preset(config) if isinstance(config, str) else config
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        world = _build_world(cfg, seed)
        _calibrate(world, seed)
        _write_static(world, tmp)
        _write_interactions(world, tmp, seed)
        (tmp / "dataset.json").write_text(json.dumps(_descriptor(world, seed), indent=2) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ------------------------------------------------------------------------------------------- summary


def _auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC via ranks (ties averaged); NaN when a class is missing."""
    from scipy.stats import rankdata

    pos = label > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def summarize(path: str | Path) -> dict[str, dict[str, float]]:
    """Per-domain statistics of a generated dataset, with the oracle AUC (AUC of ``p_true``) of the test day.

    ``cold_*`` figures are over cold-start users of the target: users with source history before the test
    day and no impression in the target before it (protocol P1).
    """
    import polars as pl

    root = Path(path)
    spec = json.loads((root / "dataset.json").read_text())
    test_start = spec["test_start"]
    df = pl.scan_parquet(root / "interactions" / "*.parquet")
    items = pl.read_parquet(root / "items.parquet")
    src_users = (
        df.filter((pl.col("domain") == spec["source_domain"]) & (pl.col("timestamp") < test_start))
        .select("user")
        .unique()
        .collect()["user"]
    )
    all_src = df.filter(pl.col("domain") == spec["source_domain"]).select("user").unique().collect()["user"]
    out: dict[str, dict[str, float]] = {}
    src = (
        df.filter(pl.col("domain") == spec["source_domain"])
        .select(pl.len().alias("rows"), pl.col("user").n_unique().alias("users"), pl.col("label").mean().alias("ctr"))
        .collect()
    )
    out[spec["source_domain"]] = {
        "rows": float(src["rows"][0]),
        "users": float(src["users"][0]),
        "items": float(items.filter(pl.col("domain") == spec["source_domain"]).height),
        "ctr": float(src["ctr"][0]),
    }
    for name in spec["target_domains"]:
        refs = [c for c in ("p_true", "p_transferable", "p_plugin") if c in df.collect_schema().names()]
        t = df.filter(pl.col("domain") == name).select("user", "label", "timestamp", *refs).collect()
        users = t["user"].unique()
        warm = t.filter(pl.col("timestamp") < test_start)["user"].unique()
        test = t.filter(pl.col("timestamp") >= test_start)
        test_users = test["user"].unique()
        cold_users = test_users.filter(test_users.is_in(src_users.implode()) & ~test_users.is_in(warm.implode()))
        cold = test.filter(pl.col("user").is_in(cold_users.implode()))
        out[name] = {
            "rows": float(t.height),
            "train_rows": float(t.height - test.height),
            "test_rows": float(test.height),
            "users": float(users.len()),
            "items": float(items.filter(pl.col("domain") == name).height),
            "ctr": float(t["label"].mean()),
            "overlap": float(users.is_in(all_src.implode()).mean()),
            "cold_users": float(cold_users.len()),
            "cold_test_rows": float(cold.height),
            "cold_test_ctr": float(cold["label"].mean()) if cold.height else float("nan"),
            "oracle_auc_cold": _auc(cold["label"].to_numpy(), cold["p_true"].to_numpy()),
            "oracle_auc_test": _auc(test["label"].to_numpy(), test["p_true"].to_numpy()),
        }
        for col, key in (("p_transferable", "oracle_transferable"), ("p_plugin", "plugin")):
            if col in refs:
                out[name][f"{key}_auc_cold"] = _auc(cold["label"].to_numpy(), cold[col].to_numpy())
    return out


def focus_categories(path: str | Path) -> dict[str, list[str]]:
    """Per target domain of a generated world, the categories of its focus topics: the behaviours the
    mechanism's domain-level part reads (``MechanismConfig``). Rebuilt from ``dataset.json``'s config and
    seed, for analysis only (never a model input)."""
    meta = json.loads((Path(path) / "dataset.json").read_text())["generator"]
    world = _build_world(SyntheticConfig.model_validate(meta["config"]), int(meta["seed"]))
    return {name: [f"cat_{t:02d}" for t in np.flatnonzero(world.focus_set[d])]
            for d, name in enumerate(world.domains) if d > 0}


def main(argv: list[str] | None = None) -> None:
    """``python -m dacdr.data.synthetic PRESET OUT_DIR [--seed S] [--overwrite]``: generate and summarise."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("preset", choices=list(PRESETS))
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = generate(args.preset, args.out_dir, seed=args.seed, overwrite=args.overwrite)
    elapsed = time.perf_counter() - start
    print(f"wrote {out} in {elapsed:.1f} s")
    for domain, stats in summarize(out).items():
        print(domain, " ".join(f"{k}={v:.4g}" for k, v in stats.items()))


if __name__ == "__main__":
    main()
