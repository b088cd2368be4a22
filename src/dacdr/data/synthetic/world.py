"""The synthetic world's maths: the world, the people and their events, calibration, the reference scores.

The world (topics, items, domains) is drawn once from the seed (`build_world`); people are then drawn in fixed
blocks of ``BLOCK_USERS``, each block from its own random stream (`block_rows`), so the data depends only on
the config and the seed. Everything here is numpy arrays; `writer` turns them into the dataset layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from dacdr.data.synthetic.config import (
    BLOCK_USERS,
    DAY_SECONDS,
    SOURCE_DOMAIN,
    SyntheticConfig,
    outsider_rate,
)

__all__ = ["World", "Rows", "block_rng", "block_rows", "build_world", "calibrate", "expected_sigmoid"]

# Users drawn (from their own streams) to solve the domain biases for the requested click rates.
_CALIBRATION_USERS = 20_000
# Gauss-Hermite nodes for E[sigmoid(mu + sd * Z)], Z ~ N(0, 1): the domain-specific taste integrated out.
# 48 nodes: the error is below 1e-9 for the sd of these worlds (sd <= 1; checked against 150 nodes in the tests).
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite.hermgauss(48)


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
class World:
    """What is drawn once per (config, seed): items, domains and their item pools, the calibrated biases."""

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


def build_world(cfg: SyntheticConfig, seed: int) -> World:
    """The world of ``cfg`` and ``seed``, biases not yet solved (`calibrate`)."""
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

    return World(
        cfg=cfg,
        domains=[SOURCE_DOMAIN, *cfg.target_names],
        item_topic=item_topic,
        item_brand=item_brand,
        item_quality=quality,
        item_latent=latent,
        focus=focus_arr,
        samplers=samplers,
        outsider_rate=np.array([outsider_rate(cfg, t) for t in cfg.targets]),
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
    world: World, hist: _History, d: int, user: np.ndarray, timestamp: np.ndarray, item: np.ndarray
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
    same = (ev_topic == cand_topic[:, None]) & valid
    similarity = np.einsum("nwj,nj->nw", world.item_residual[ev_item], world.item_residual[item])
    if mech.item_part == "best":
        best = np.where(same, w * similarity, -np.inf).max(axis=1)
        item_part = 2.0 * np.where(np.isfinite(best), best, 0.0)
    else:
        item_part = 2.0 * _weighted_mean(similarity, w * same)
    return mech.strength * (mech.domain_weight * domain_part + mech.item_weight * item_part), plugin


def _topic_draw(rng: np.random.Generator, mix: np.ndarray, user: np.ndarray) -> np.ndarray:
    """One topic per row from the row's user's topic distribution (inverse CDF, vectorised)."""
    cum = np.cumsum(mix, axis=1)
    cum /= cum[:, -1:]
    u = rng.random(user.size)
    topic = (u[:, None] >= cum[user]).sum(axis=1)
    return np.minimum(topic, mix.shape[1] - 1)


def draw_block(world: World, rng: np.random.Generator, n: int) -> list[_Events]:
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


def block_rng(seed: int, stream: int, block: int) -> np.random.Generator:
    """The random stream of one block: stream 1 draws the data, stream 2 the calibration sample."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, block)))


def _solve_bias(logit: np.ndarray, rate: float, weight: np.ndarray | None = None) -> float:
    """The bias b with weighted mean sigmoid(b + logit) == rate."""
    w = np.ones_like(logit) if weight is None else weight
    total = w.sum()
    return float(brentq(lambda b: float((w * _sigmoid(b + logit)).sum() / total) - rate, -30.0, 30.0))


def calibrate(world: World, seed: int) -> None:
    """Solve the domain and funnel biases so that the expected rates equal the configured ones.

    Uses its own random streams (not the data's), so the biases do not depend on ``n_users`` or chunking.
    """
    cfg = world.cfg
    per_domain: list[list[np.ndarray]] = [[] for _ in world.domains]
    for b in range(math.ceil(_CALIBRATION_USERS / BLOCK_USERS)):
        for d, ev in enumerate(draw_block(world, block_rng(seed, 2, b), BLOCK_USERS)):
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


@dataclass
class Rows:
    """All rows of a block of people, sorted by (user, timestamp); ``domain`` and ``behaviour`` are codes into
    ``World.domains`` and ``BEHAVIOUR_TYPES``; the references are NaN on source rows."""

    user: np.ndarray
    domain: np.ndarray
    item: np.ndarray
    behaviour: np.ndarray
    label: np.ndarray
    timestamp: np.ndarray
    p_true: np.ndarray
    p_transferable: np.ndarray
    p_plugin: np.ndarray


def block_rows(world: World, rng: np.random.Generator, first_user: int, n: int) -> Rows:
    """All rows of users ``first_user .. first_user + n - 1``, labels drawn, sorted by (user, timestamp)."""
    cfg = world.cfg
    events = draw_block(world, rng, n)
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
    return Rows(
        user=user[order] + first_user,
        domain=np.concatenate(domains)[order],
        item=np.concatenate(items)[order],
        behaviour=np.concatenate(behaviours)[order],
        label=np.concatenate(labels)[order],
        timestamp=timestamp[order],
        p_true=np.concatenate(p_true)[order],
        p_transferable=np.concatenate(p_transferable)[order],
        p_plugin=np.concatenate(p_plugin)[order],
    )
