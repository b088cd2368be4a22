"""The synthetic world's reference scores and its mechanism (selective relevance of the history).

- `p_transferable`: the domain-specific taste integrated out by Gauss-Hermite quadrature (checked against a
  finer rule and Monte Carlo);
- the mechanism's logit term is a function of exactly the behaviours a model sees: recomputed here,
  independently, from the prepared sequences (max_len = the mechanism's window);
- with the mechanism off, the worlds are the ones dacdr always generated (same rows, same labels).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dacdr.data import synthetic
from dacdr.data.dataset import load_dataset
from dacdr.data.features import FIRST_ID
from dacdr.data.samples import prepare
from dacdr.data.synthetic import expected_sigmoid, focus_categories, generate, get_preset, summarize
from dacdr.data.synthetic import world as synthetic_world


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mech")
    return {
        "on": generate("mechanism-tiny", root / "on", seed=0),
        "off": generate(get_preset("mechanism-tiny", mechanism={"strength": 0.0}), root / "off", seed=0),
        "best": generate(get_preset("mechanism-tiny", mechanism={"item_part": "best"}), root / "best", seed=0),
    }


def test_expected_sigmoid_matches_a_finer_rule_and_monte_carlo() -> None:
    rng = np.random.default_rng(0)
    mean, sd = rng.normal(-2.0, 1.5, 200), rng.uniform(0.0, 1.0, 200)
    nodes, weights = np.polynomial.hermite.hermgauss(150)
    fine = (1 / (1 + np.exp(-(mean[:, None] + sd[:, None] * math.sqrt(2) * nodes)))) @ weights / math.sqrt(math.pi)
    np.testing.assert_allclose(expected_sigmoid(mean, sd), fine, atol=1e-9)
    z = rng.normal(size=200_000)
    mc = (1 / (1 + np.exp(-(mean[:5, None] + sd[:5, None] * z)))).mean(1)
    np.testing.assert_allclose(expected_sigmoid(mean[:5], sd[:5]), mc, atol=3e-3)
    np.testing.assert_allclose(expected_sigmoid(mean, np.zeros(200)), 1 / (1 + np.exp(-mean)), atol=1e-12)


def test_reference_columns_are_written_for_target_rows_only(worlds) -> None:
    df = pl.read_parquet(worlds["on"] / "interactions" / "*.parquet")
    target = df["domain"] != "source"
    for col in ("p_true", "p_transferable", "p_plugin"):
        assert df.filter(target)[col].null_count() == 0
        assert df.filter(~target)[col].null_count() == int((~target).sum())
        assert df.filter(target)[col].is_between(0, 1).all()
    stats = summarize(worlds["on"])
    for name in ("target_1", "target_2"):
        # the ceiling reachable from the source is not above the oracle by more than noise; the plug-in,
        # which knows only the topic histogram, is well under both on the mechanism world
        assert stats[name]["oracle_transferable_auc_cold"] <= stats[name]["oracle_auc_cold"] + 0.02
        assert stats[name]["plugin_auc_cold"] < stats[name]["oracle_transferable_auc_cold"] - 0.05


def test_mechanism_off_leaves_the_world_unchanged(worlds, tmp_path) -> None:
    """Strength 0 is today's world: the same rows and labels as a config without the mechanism field."""
    cfg = get_preset("mechanism-tiny").model_dump()
    cfg.pop("mechanism")
    plain = generate(synthetic.SyntheticConfig.model_validate(cfg), tmp_path / "plain", seed=0)
    a = pl.read_parquet(plain / "interactions" / "*.parquet")
    b = pl.read_parquet(worlds["off"] / "interactions" / "*.parquet")
    # (the plug-in reference reads the mechanism's window, 30 here against the default 50)
    assert a.drop("p_plugin").equals(b.drop("p_plugin"))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


@pytest.mark.parametrize("variant", ["on", "best"])
def test_mechanism_term_is_a_function_of_the_visible_sequence(worlds, variant) -> None:
    """logit(p_on) - logit(p_off) - the recomputed term is one constant per target (the change of the
    calibrated bias), i.e. the term depends on nothing but the last `window` source behaviours before τ
    (`best`: the item-level part is the best match instead of the mean similarity)."""
    on, off = (pl.read_parquet(worlds[k] / "interactions" / "*.parquet") for k in (variant, "off"))
    assert on.select("user", "item", "timestamp").equals(off.select("user", "item", "timestamp"))
    meta = json.loads((worlds[variant] / "dataset.json").read_text())["generator"]
    cfg = synthetic.SyntheticConfig.model_validate(meta["config"])
    world = synthetic_world.build_world(cfg, meta["seed"])
    mech = cfg.mechanism
    assert mech.item_part == ("best" if variant == "best" else "mean")
    prepared = prepare(load_dataset(worlds[variant]), max_len=mech.window)
    s, ev = prepared.samples, prepared.events
    item_ids = np.asarray(prepared.vocabs["item"].values).astype(np.int64)  # vocab values are strings
    domains = prepared.vocabs["domain"]
    rng = np.random.default_rng(0)
    for d, name in enumerate(world.domains[1:], start=1):
        rows = np.flatnonzero(s["domain"] == domains.lookup(name))
        rows = rng.choice(rows, 300, replace=False)
        expected = []
        for r in rows:
            hist = item_ids[ev["item"][s["seq_start"][r] : s["seq_end"][r]] - FIRST_ID]  # oldest first
            cand = item_ids[s["item"][r] - FIRST_ID]
            ranks = np.arange(len(hist))[::-1]  # 0 = most recent
            w = 0.5 ** (ranks / mech.recency_half_life)
            topics = world.item_topic[hist]
            focus = world.focus_set[d][topics]
            dom = (w * focus * world.item_style[d][hist]).sum() / (w * focus).sum() if focus.any() else 0.0
            same = topics == world.item_topic[cand]
            sim = world.item_residual[hist] @ world.item_residual[cand]
            if not same.any():
                itm = 0.0
            elif mech.item_part == "best":
                itm = 2 * (w * sim)[same].max()
            else:
                itm = 2 * (w * same * sim).sum() / (w * same).sum()
            expected.append(mech.strength * (mech.domain_weight * dom + mech.item_weight * itm))
        diff = _logit(on["p_true"].to_numpy()[rows]) - _logit(off["p_true"].to_numpy()[rows]) - np.array(expected)
        assert np.ptp(diff) < 1e-6, name
        assert np.std(expected) > 0.3  # the term is not a constant


def test_focus_categories_name_each_targets_focus(worlds) -> None:
    cats = focus_categories(worlds["on"])
    assert set(cats) == {"target_1", "target_2"}
    assert all(len(c) == get_preset("mechanism-tiny").focus_topics for c in cats.values())
