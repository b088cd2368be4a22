"""`POST /v1/recommend` (retrieval + exact re-ranking) and `explain: true`, through a real uvicorn process."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from dacdr.package import PackageError, build_package, load_package
from dacdr.serving.app import ServiceSettings, create_app
from dacdr.serving.recommend import RetrievalConfig, attach_indexes, load_indexes, recommend, save_indexes
from dacdr.serving.scoring import ScoreQuery, Scorer
from tests.serving.helpers import TINY_PARAMS, Server, train_tiny_run

POOLS = {"source": list(range(30)), "target_a": list(range(30, 45)), "target_b": list(range(45, 60))}


@pytest.fixture(scope="module")
def package(handmade_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    return build_package(train_tiny_run(handmade_path, root / "run"), root / "pkg", log=lambda *_: None)


@pytest.fixture(scope="module")
def client(package):
    srv = Server(package, token=None)
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c
    srv.stop()


def _user_with_history(package) -> tuple[str, list[int]]:
    pkg = load_package(package)
    for u in pkg.vocabs["user"].values:
        h = pkg.store.history(u)
        if h is not None and len(h) >= 4:
            item_col = pkg.spec.sequence_fields.index("item")
            return u, [int(pkg.vocabs["item"].values[i - 2]) for i in h[:, item_col]]
    raise AssertionError("no user with a history")


def test_package_holds_each_domains_item_pool(package):
    pkg = load_package(package)
    values = pkg.vocabs["item"].values
    assert {d: sorted(int(values[i - 2]) for i in pool) for d, pool in pkg.item_pools.items()} == POOLS


def test_recommend_returns_the_top_k_of_the_whole_pool(client, package):
    user, _ = _user_with_history(package)
    r = client.post("/v1/recommend", json={"user_id": user, "domain": "target_a", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["retrieval"] == {"mode": "exact", "pool": 15, "excluded": 0, "scored_exactly": 15}
    full = client.post("/v1/score", json={"user_id": user, "domain": "target_a", "items": POOLS["target_a"]}).json()
    order = np.argsort(-np.asarray(full["scores"]), kind="stable")[:5]
    assert [int(x["item"]) for x in body["items"]] == [POOLS["target_a"][i] for i in order]
    np.testing.assert_allclose([x["score"] for x in body["items"]], np.asarray(full["scores"])[order], atol=1e-6)
    assert body["model_version"] == full["model_version"]


def test_recommend_leaves_out_excluded_items_and_the_users_history(client, package):
    user, history = _user_with_history(package)
    top = client.post("/v1/recommend", json={"user_id": user, "domain": "target_b", "k": 3}).json()["items"]
    again = client.post("/v1/recommend", json={"user_id": user, "domain": "target_b", "k": 3,
                                               "exclude": [top[0]["item"], "no-such-item"]}).json()
    assert top[0]["item"] not in [x["item"] for x in again["items"]]
    assert again["unknown_items"] == ["no-such-item"] and again["retrieval"]["excluded"] == 1
    # the source pool holds the user's own history: left out by default, allowed on request
    seen = {str(i) for i in history}
    src = client.post("/v1/recommend", json={"user_id": user, "domain": "source", "k": 30}).json()
    assert src["retrieval"]["excluded"] == len(seen) and not seen & {x["item"] for x in src["items"]}
    everything = client.post("/v1/recommend", json={"user_id": user, "domain": "source", "k": 30,
                                                    "exclude_history": False}).json()
    assert {x["item"] for x in everything["items"]} == {str(i) for i in POOLS["source"]}


def test_recommend_for_an_unknown_user_and_bad_requests(client):
    body = client.post("/v1/recommend", json={"user_id": "stranger", "domain": "target_a", "k": 2}).json()
    assert len(body["items"]) == 2 and body["history"]["unknown_user"] is True
    for payload, field in (({"user_id": 1, "domain": "mars", "k": 2}, "domain"),
                           ({"user_id": 1, "domain": "target_a", "k": 0}, "k"),
                           ({"user_id": 1, "domain": "target_a", "items": [30]}, "items")):
        r = client.post("/v1/recommend", json=payload)
        assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_explain_names_the_behaviours_with_the_largest_weights(client, package):
    user, _ = _user_with_history(package)
    body = client.post("/v1/score", json={"user_id": user, "domain": "target_a", "items": [30, 31],
                                          "explain": True}).json()
    ex = body["explanations"]
    assert [e["item"] for e in ex["items"]] == [30, 31]
    for entries in [ex["domain_level"], *(e["item_level"] for e in ex["items"])]:
        weights = [b["weight"] for b in entries]
        assert 0 < len(entries) <= 5 and weights == sorted(weights, reverse=True) and 0 < sum(weights) <= 1 + 1e-6
        assert all(b["behaviour"] in {"browse", "click", "cart", "purchase"} for b in entries)
    # one behaviour in the history: it carries all the weight at both levels
    one = client.post("/v1/score", json={"user_id": "x", "domain": "target_a", "items": [30], "explain": True,
                                         "history": [{"item": 7, "behaviour": "cart"}]}).json()["explanations"]
    expected = [{"item": 7, "behaviour": "cart", "position": 0, "weight": 1.0}]
    assert one["domain_level"] == expected and one["items"][0]["item_level"] == expected
    rec = client.post("/v1/recommend", json={"user_id": user, "domain": "target_b", "k": 2, "explain": True}).json()
    assert len(rec["explanations"]["domain_level"]) > 0 and all(len(x["item_level"]) > 0 for x in rec["items"])
    plain = client.post("/v1/score", json={"user_id": user, "domain": "target_a", "items": [30]}).json()
    assert "explanations" not in plain and plain["scores"] == body["scores"][:1]


def test_explain_is_refused_for_a_model_without_attention(handmade_path, tmp_path):
    from dacdr.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from dacdr.recipes.train import train_run

    cfg = RunConfig(data=DataConfig(path=str(handmade_path), max_len=8),
                    model=ModelConfig(name="DACDR w/o DA&IA", params=TINY_PARAMS),
                    train=TrainConfig(epochs=1, batch_size=128, progress=False, num_threads=1))
    train_run(cfg, run_dir=tmp_path / "run")
    pkg = build_package(tmp_path / "run", tmp_path / "pkg", log=lambda *_: None)
    with TestClient(create_app(ServiceSettings(package=pkg))) as c:
        for path, payload in (("/v1/score", {"user_id": 1, "domain": "target_a", "items": [30], "explain": True}),
                              ("/v1/recommend", {"user_id": 1, "domain": "target_a", "explain": True})):
            r = c.post(path, json=payload)
            assert r.status_code == 422 and r.json()["field"] == "explain", r.text
            assert "DACDR w/o DA&IA" in r.json()["error"]
        assert c.post("/v1/recommend", json={"user_id": 1, "domain": "target_a", "k": 3}).status_code == 200


def test_retrieval_stage_rescores_its_candidates_exactly_and_round_trips(package, tmp_path):
    """Forced onto the 30-item source pool: the returned scores are exact, and the saved index loads back."""
    package = Path(shutil.copytree(package, tmp_path / "pkg"))  # the index is added to this copy
    cfg = RetrievalConfig(rank=3, probes=4, rerank=12, fit_users=20)
    scorer = Scorer.load(package, "torch", 1)
    attach_indexes(scorer, cfg)
    assert scorer.indexes["source"].retrieval and not scorer.indexes["target_a"].retrieval
    user, _ = _user_with_history(package)
    q = ScoreQuery(user, "source", [])
    got = recommend(scorer, q, k=5, exclude_history=False)
    assert got["retrieval"] == {"mode": "retrieval", "pool": 30, "excluded": 0, "scored_exactly": 16}
    exact = scorer.score([ScoreQuery(user, "source", [x["item"] for x in got["items"]])])[0]["scores"]
    np.testing.assert_allclose([x["score"] for x in got["items"]], exact, atol=1e-6)
    full = recommend(scorer, q, k=5, exclude_history=False, exact=True)
    assert full["retrieval"]["scored_exactly"] == 30
    assert [x["score"] for x in got["items"]] <= [x["score"] for x in full["items"]]  # never above the true top

    save_indexes(scorer, scorer.indexes, cfg)
    fresh = Scorer.load(package, "torch", 1)
    attach_indexes(fresh)  # default config, but the saved index (and its configuration) wins
    assert fresh.retrieval == cfg
    np.testing.assert_array_equal(fresh.indexes["source"].factors, scorer.indexes["source"].factors)
    assert recommend(fresh, q, k=5, exclude_history=False)["items"] == got["items"]
    assert "retrieval.safetensors" in load_package(package).manifest["files"]  # listed, so checksummed
    fresh.version = "DACDR-000000000000"  # another package version: the saved index is not used
    assert load_indexes(fresh) is None
    with open(package / "retrieval.safetensors", "r+b") as f:  # a modified index is refused, not used
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    with pytest.raises(PackageError, match="retrieval.safetensors"):
        Scorer.load(package, "torch", 1)
