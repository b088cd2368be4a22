"""The synthetic world's parameters: the pydantic schemas, the presets and `get_preset`."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dacdr.config import StrictModel

__all__ = [
    "BEHAVIOUR_TYPES",
    "DAY_SECONDS",
    "PRESETS",
    "SOURCE_DOMAIN",
    "MechanismConfig",
    "SourceConfig",
    "SyntheticConfig",
    "TargetConfig",
    "default_targets",
    "get_preset",
]

BEHAVIOUR_TYPES = ("browse", "click", "cart", "purchase", "impression")
SOURCE_DOMAIN = "source"
DAY_SECONDS = 86_400
# Users per random stream. A constant (not a config field) so that the data never depends on how it is
# split into files; small enough that one block's arrays are a few MB even for heavy users.
BLOCK_USERS = 250


class _Frozen(StrictModel):
    # Frozen: PRESETS are shared module-level objects that no caller may change in place.
    model_config = ConfigDict(frozen=True)


class SourceConfig(_Frozen):
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


class TargetConfig(_Frozen):
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


class MechanismConfig(_Frozen):
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
    item_part: Literal["mean", "best"] = Field(
        "mean",
        description="how the item-level part reads the candidate's category in her history: 'mean' = the "
        "recency-weighted mean similarity (above); 'best' = the best match, twice the largest recency-weighted "
        "similarity (recency weight x cosine) among those behaviours, 0 when she has none — a maximum, which "
        "no pooled mean of the history gives exactly (a count of the candidate's brand approximates it)",
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


def default_targets() -> list[TargetConfig]:
    # Targets 2 and 3 share a business line, targets 1 and 3 a page type: domain features that generalise.
    return [
        TargetConfig(page_type="feed", business_line="fashion", ctr=0.06, overlap=0.85, reach=0.35),
        TargetConfig(
            page_type="banner", business_line="electronics", ctr=0.08, overlap=0.8, reach=0.3, personalisation=0.4
        ),
        TargetConfig(page_type="feed", business_line="electronics", ctr=0.07, overlap=0.9, reach=0.3),
    ]


class SyntheticConfig(_Frozen):
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
        f"blocks of {BLOCK_USERS}); does not change the data",
    )
    source: SourceConfig = Field(default_factory=SourceConfig, description="the source domain")
    mechanism: MechanismConfig = Field(
        default_factory=MechanismConfig, description="selective relevance of the history (off by default)"
    )
    targets: list[TargetConfig] = Field(
        default_factory=default_targets, min_length=1, description="target domains target_1 .. target_k"
    )

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        for t, tgt in enumerate(self.targets, start=1):
            q = outsider_rate(self, tgt)
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


def outsider_rate(cfg: SyntheticConfig, tgt: TargetConfig) -> float:
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
        targets=[t.model_copy(update={"n_items": 20_000}) for t in default_targets()],
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
