"""The split ONNX engine: user-side + candidate-side graphs give the eager model's and the single graph's scores,
its user-side cache is bounded and never serves a stale history, and models it does not cover keep one graph."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dacdr.export import onnx_bytes
from dacdr.models import create_model
from dacdr.package import build_package, load_package
from dacdr.serving import split as split_mod
from dacdr.serving.engines import OnnxEngine, SplitOnnxEngine, make_onnx_engine
from dacdr.serving.scoring import ScoreQuery, Scorer
from dacdr.serving.split import split_onnx_bytes, split_support
from tests.serving.helpers import train_tiny_run

TOL = 1e-5  # raw scores (logits), float32: another association of the same products


@pytest.fixture(scope="module")
def package(handmade_path, tmp_path_factory):
    run = train_tiny_run(handmade_path, tmp_path_factory.mktemp("run") / "run")
    return build_package(run, tmp_path_factory.mktemp("pkg") / "pkg", log=lambda *_: None)


def _session(graph: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(graph, providers=["CPUExecutionProvider"])


def _cases(spec, seed: int = 3):
    """(seq, mask, item, domain) of one user padded to max_len, histories of every length class, with
    candidates that share their item / category with the history (the count features fire)."""
    gen = torch.Generator().manual_seed(seed)
    length = spec.max_len

    def ids(fields, *shape):
        return torch.stack([torch.randint(0, spec.vocab_sizes[f], shape, generator=gen) for f in fields], -1)

    for valid in (0, 1, 3, length):
        seq = ids(spec.sequence_fields, 1, length)
        mask = torch.zeros(1, length, dtype=torch.bool)
        if valid:
            mask[0, -valid:] = True
        seq[~mask] = 0  # padding, as `assemble` builds it
        item = ids(spec.item_fields, 9)
        if valid:
            item[0] = seq[0, -1, : item.shape[1]]
            item[1, 1] = seq[0, -valid, 1]
            item[2, 0] = 1  # out of vocabulary: never a hit
        yield seq, mask, item, ids(spec.domain_fields, 1), valid


VARIANTS = [
    ("DACDR", {}),  # 0.6's defaults: count features, token match, temperature 0.25, step 2's prior floor, step 1's
    # domain prior, the history's mean in the encoder
    ("DACDR", {"history_mean": False}),  # 0.5's
    ("DACDR w/o DA&IA", {"ablation": "drop", "history_mean": True}),  # one mean serves the dropped pooling and 0.6
    ("DACDR", {"temperature": 1.0, "prior_floor": False}),  # 0.3's
    ("DACDR w/o DA", {}),
    ("DACDR w/o IA", {}),
    ("DACDR w/o DA&IA", {}),
    ("DACDR (paper)", {}),
    ("DACDR", {"mass_feature": True, "domain_mass_feature": True, "position_keys": True, "temperature": 0.5}),
    ("DACDR", {"count_weights": "uniform", "match_on": "values"}),
    ("DACDR", {"count_weights": "domain"}),
    ("DACDR w/o DA", {"mass_feature": True}),
    ("DACDR w/o IA", {"ablation": "drop"}),
    ("DACDR w/o DA&IA", {"ablation": "drop", "match_on": "values"}),
    ("DACDR", {"attention_score": "cosine", "prior_floor": True, "temperature": 0.25}),
    ("DACDR w/o DA", {"attention_score": "cosine", "mass_feature": True, "position_keys": True}),
    ("DACDR", {"prior_floor": True, "mass_feature": True}),
    ("DACDR", {"domain_prior": True, "domain_mass_feature": True}),  # step 1's domain prior (random below)
    ("DACDR w/o IA", {"domain_prior": True}),
]


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=[f"{n} {p}" for n, p in VARIANTS])
def test_split_graphs_match_eager_and_single_graph(package, name, params):
    spec = load_package(package).spec
    torch.manual_seed(0)
    model = create_model(name, spec, **params).eval()
    with torch.no_grad():  # random weights are small: scale the predictor's output so that differences show
        model.predictor[-1].weight.mul_(30.0)
        if getattr(model, "prior_logit", None) is not None:
            model.prior_logit.fill_(0.3)  # a floor well inside (0, 1)
        for table in getattr(model, "domain_prior", None) or []:
            table.normal_(0.0, 1.0)  # it starts at 0: give the split something to get wrong
    assert split_support(model) is None
    user_graph, cand_graph, names = split_onnx_bytes(model)
    user, cand, single = _session(user_graph), _session(cand_graph), _session(onnx_bytes(model))
    for seq, mask, item, domain, valid in _cases(spec):
        keep = max(valid, 1)  # the unpadded history, as a request brings it (one masked slot when empty)
        with torch.no_grad():
            want = model(seq[:, -keep:], mask[:, -keep:], item, domain).numpy()
        assert np.abs(want).max() > 0.1
        side = user.run(names, {"seq": seq.numpy(), "seq_mask": mask.numpy(), "domain": domain.numpy()})
        got = cand.run(["score"], {"item": item.numpy(), **dict(zip(names, side, strict=True))})[0]
        one = single.run(["score"], {"seq": seq[:, -keep:].numpy(), "seq_mask": mask[:, -keep:].numpy(),
                                     "item": item.numpy(), "domain": domain.numpy()})[0]
        assert got.shape == want.shape == (item.shape[0],)
        assert np.abs(got - want).max() <= TOL, (valid, np.abs(got - want).max())
        assert np.abs(got - one).max() <= TOL


def test_the_candidate_graph_is_small(package):
    import onnx

    model = load_package(package).model
    _, cand_graph, _ = split_onnx_bytes(model)
    nodes = [n for n in onnx.load_from_string(cand_graph).graph.node if n.op_type != "Constant"]
    single = [n for n in onnx.load_from_string(onnx_bytes(model)).graph.node if n.op_type != "Constant"]
    assert len(nodes) <= 40 < len(single)


@pytest.mark.parametrize(("name", "params"), [("DACDR", {}), ("DACDR", {"match_on": "values"}),
                                               ("DACDR w/o DA", {"count_weights": "domain"})])
def test_the_head_mean_candidate_graph_equals_the_earlier_one_with_fewer_products(package, name, params):
    """`head_mean` (the default) takes step 2's head mean once for the token match and the count shares instead
    of an identity block of `wc`: same scores as the earlier graph, and a smaller `wc` with the token match."""
    spec = load_package(package).spec
    torch.manual_seed(1)
    model = create_model(name, spec, **params).eval()
    with torch.no_grad():
        model.predictor[-1].weight.mul_(30.0)
    new, old = split_mod.CandidateSide(model), split_mod.CandidateSide(model, head_mean=False)
    tokens = model.match_features and model.match_on == "tokens"
    assert new.wc.shape[0] == old.wc.shape[0]
    assert new.wc.shape[1] == old.wc.shape[1] - (len(spec.item_fields) * new.lay.k if tokens else 0)
    user = split_mod.UserSide(model).eval()
    for seq, mask, item, domain, _ in _cases(spec, seed=5):
        with torch.no_grad():
            side = user(seq, mask, domain)
            got, want = new(item, *side).numpy(), old(item, *side).numpy()
        assert np.abs(got - want).max() <= TOL


def test_trained_package_split_engine_matches_the_eager_scorer(package):
    eager = Scorer.load(package, "torch")
    split = Scorer.load(package, "onnx", onnx_graph="split")
    single = Scorer.load(package, "onnx", onnx_graph="single")
    assert split.engine.info()["graph"] == "split" and single.engine.info() == {"graph": "single"}
    users = [u for u in eager.user_vocab.values if eager.pkg.store.history(u) is not None][:4]
    queries = [ScoreQuery(u, "target_a", [30, 31, "x", 45]) for u in users]
    queries.append(ScoreQuery("stranger", "target_b", [45, 30]))  # empty history
    queries.append(ScoreQuery("u", "target_a", [30], [{"item": 30, "behaviour": "click"}] * 3))
    want = eager.score(queries)  # several users in one call: the split engine scores them one by one
    for got in (split.score(queries), single.score(queries), [split.score([q])[0] for q in queries]):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g["scores"], w["scores"], atol=1e-6)


def test_user_cache_is_bounded_and_keyed_by_the_history(package):
    eager = Scorer.load(package, "torch")
    split = Scorer.load(package, "onnx", onnx_graph="split", user_cache=2)
    engine = split.engine
    assert isinstance(engine, SplitOnnxEngine)
    items = [30, 31, 45]

    def both(q):
        return split.score([q])[0]["scores"], eager.score([q])[0]["scores"]

    histories = [[{"item": i, "behaviour": "click"}] for i in (30, 31, 45)]
    for hist in histories:  # three histories for the same user id: three entries, at most two kept
        got, want = both(ScoreQuery("same-user", "target_a", items, hist))
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert engine.info()["user_cache"]["entries"] <= 2
    before = engine.info()["user_cache"]
    got, want = both(ScoreQuery("same-user", "target_a", items, histories[-1]))  # the last one: from the cache
    np.testing.assert_allclose(got, want, atol=1e-6)
    after = engine.info()["user_cache"]
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]
    # a new history for the same user (or another domain) is a new entry, never the cached one
    got, want = both(ScoreQuery("same-user", "target_a", items, histories[-1] * 2))
    np.testing.assert_allclose(got, want, atol=1e-6)
    got_b, want_b = both(ScoreQuery("same-user", "target_b", items, histories[-1]))
    np.testing.assert_allclose(got_b, want_b, atol=1e-6)
    assert engine.info()["user_cache"]["misses"] == after["misses"] + 2
    off = Scorer.load(package, "onnx", onnx_graph="split", user_cache=0)
    q = ScoreQuery("same-user", "target_a", items, histories[0])
    np.testing.assert_allclose(off.score([q])[0]["scores"], eager.score([q])[0]["scores"], atol=1e-6)
    assert off.engine.info()["user_cache"]["entries"] == 0
    with pytest.raises(ValueError, match="user cache"):
        SplitOnnxEngine(split.pkg, 1, user_cache=-1)


def test_reload_does_not_reuse_user_side_results(package, handmade_path, tmp_path):
    """A reloaded package is a new scorer with a new engine: the same user and history are recomputed."""
    other = build_package(train_tiny_run(handmade_path, tmp_path / "run1", seed=1), tmp_path / "pkg1",
                          log=lambda *_: None)
    q = ScoreQuery("u", "target_a", [30, 31], [{"item": 30, "behaviour": "click"}])
    first = Scorer.load(package, "onnx", onnx_graph="split").score([q])[0]["scores"]
    second = Scorer.load(other, "onnx", onnx_graph="split").score([q])[0]["scores"]
    np.testing.assert_allclose(second, Scorer.load(other, "torch").score([q])[0]["scores"], atol=1e-6)
    assert np.abs(np.array(first) - np.array(second)).max() > 1e-4


def test_a_dacdr_parameter_the_split_does_not_know_keeps_the_single_graph(package):
    model = load_package(package).model
    model.params = model.params | {"new_lever": True}
    assert "new_lever" in split_support(model)
    model.params = model.params | {"new_lever": True, "dim": 8}
    assert "new_lever" in split_support(model)
    bonus = create_model("DACDR", model.spec, match_bonus=True)  # a candidate-dependent prior: not folded
    assert "match_bonus" in split_support(bonus)


def test_models_the_split_does_not_cover_keep_the_single_graph(package):
    pkg = load_package(package)
    dnn = dataclasses.replace(pkg, model=create_model("DNN-multi", pkg.spec).eval())
    reason = split_support(dnn.model)
    assert reason is not None and "DNN" in reason
    engine = make_onnx_engine(dnn, 1, "auto")
    assert isinstance(engine, OnnxEngine) and engine.info() == {"graph": "single", "split": reason}
    with pytest.raises(ValueError, match="--onnx-graph split: not available.*DNN"):
        make_onnx_engine(dnn, 1, "split")
    with pytest.raises(ValueError, match="onnx graph"):
        make_onnx_engine(pkg, 1, "fused")  # type: ignore[arg-type]


def test_a_split_that_disagrees_with_the_model_is_not_served(package, monkeypatch):
    """The start-up check compares the split with the eager model: a split that reads the model wrongly (here
    every candidate field looked up in the item table, as a change to the embeddings the split did not follow
    would do) falls back to the single graph."""
    right = split_mod._gather_tables

    def wrong(model):
        table, offsets = right(model)
        return table, torch.zeros_like(offsets)

    monkeypatch.setattr(split_mod, "_gather_tables", wrong)
    pkg = load_package(package)
    engine = make_onnx_engine(pkg, 1, "auto")
    assert isinstance(engine, OnnxEngine)
    assert "differ from the model" in engine.info()["split"]
    with pytest.raises(ValueError, match="differ from the model"):
        make_onnx_engine(pkg, 1, "split")


def test_longer_or_multi_user_inputs_go_to_the_single_graph(package):
    pkg = load_package(package)
    engine = make_onnx_engine(pkg, 1, "split")
    model, spec = pkg.model.eval(), pkg.spec
    gen = torch.Generator().manual_seed(5)
    length = spec.max_len + 4
    seq = torch.stack([torch.randint(2, spec.vocab_sizes[f], (2, length), generator=gen)
                       for f in spec.sequence_fields], -1)
    mask = torch.ones(2, length, dtype=torch.bool)
    item = torch.stack([torch.randint(2, spec.vocab_sizes[f], (2,), generator=gen) for f in spec.item_fields], -1)
    domain = torch.stack([torch.randint(2, spec.vocab_sizes[f], (2,), generator=gen) for f in spec.domain_fields], -1)
    with torch.no_grad():
        want = model.predict(model(seq, mask, item, domain)).numpy()
    for rows in (slice(0, 1), slice(0, 2)):  # one user longer than max_len; two users
        got = engine({"seq": seq[rows].numpy(), "seq_mask": mask[rows].numpy(), "item": item[rows].numpy(),
                      "domain": domain[rows].numpy()})
        np.testing.assert_allclose(got, want[rows], atol=1e-6)
