"""A served score is the offline score of the same (user, item, domain) and source history.

Offline: `model.predict(model.score(batch))` on the `BatchGatherer` batches of the run's test samples. Served:
the packaged model through `Scorer.score` and through the HTTP app (FastAPI's TestClient), on the eager and
the ONNX engine, one request at a time (one history broadcast over the items) and several per call (the
history repeated on every row). The histories come from the package's store where it holds exactly the
sample's offline sequence, and are otherwise sent in the request, decoded from the prepared events.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from dacdr.data.batches import BatchGatherer
from dacdr.data.features import FIRST_ID
from dacdr.package import build_package, load_package, run_prepared
from dacdr.serving.app import ServiceSettings, create_app
from dacdr.serving.scoring import ScoreQuery, Scorer
from dacdr.training.checkpoint import load_model
from tests.serving.helpers import train_tiny_run

pytestmark = pytest.mark.slow

TOLERANCE = {"torch": 1e-6, "onnx": 1e-5}
"""absolute, on click probabilities: the same float32 graph (torch), another runtime's kernels (ONNX)"""


@dataclass
class Case:
    query: ScoreQuery
    expected: np.ndarray
    """offline predictions of `query.items`, in order"""

    def body(self) -> dict:
        body = {"user_id": self.query.user_id, "domain": self.query.domain, "items": self.query.items}
        return body | ({"history": self.query.history} if self.query.history is not None else {})


@pytest.fixture(scope="module")
def package(tiny_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    return build_package(train_tiny_run(tiny_path, root / "run"), root / "pkg", log=lambda *_: None)


@pytest.fixture(scope="module")
def cases(package) -> dict[str, list[Case]]:
    """Test samples grouped into requests: one per (user, domain, history), its items those samples' items."""
    pkg = load_package(package)
    run_dir = Path(pkg.manifest["source_run"])
    prepared, _ = run_prepared(run_dir, log=lambda *_: None)
    model, _ = load_model(run_dir)
    model.eval()
    test = prepared.split.test
    gatherer = BatchGatherer(prepared)
    with torch.inference_mode():
        offline = np.concatenate([model.predict(model.score(b)).float().numpy() for b in gatherer.iterate(test, 512)])
    s, spec, vocabs = prepared.samples, prepared.spec, prepared.vocabs
    events = np.stack([prepared.events[f] for f in spec.sequence_fields], axis=1)
    item_col = spec.item_fields.index("item")
    assert np.array_equal(prepared.item_table[FIRST_ID:, item_col], np.arange(FIRST_ID, len(vocabs["item"])))

    def raw(field: str, index: int) -> str:
        return vocabs[field].values[int(index) - FIRST_ID]

    groups: dict[tuple, list[int]] = {}
    for k, row in enumerate(test):
        groups.setdefault((int(s["user"][row]), int(s["domain"][row]), int(s["seq_start"][row]),
                           int(s["seq_end"][row])), []).append(k)
    out: dict[str, list[Case]] = {"store": [], "request": []}
    for (user, domain, start, end), ks in groups.items():
        items = [raw("item", s["item"][test[k]]) for k in ks]
        history = events[start:end]
        stored = pkg.store.history(raw("user", user))
        if stored is not None and np.array_equal(stored, history):
            out["store"].append(Case(ScoreQuery(raw("user", user), raw("domain", domain), items), offline[ks]))
        elif len(out["request"]) < 60:
            sent = [{"item": raw("item", ev[item_col]), "behaviour": raw("behaviour", ev[spec.sequence_fields.index(
                "behaviour")])} for ev in history]
            out["request"].append(Case(ScoreQuery(f"new-{user}", raw("domain", domain), items, sent), offline[ks]))
    out["store"] = out["store"][:60]
    return out


def test_the_cases_cover_both_history_sources(cases):
    """The comparison below means something only with enough requests of each kind, several items each."""
    assert len(cases["store"]) >= 20 and len(cases["request"]) >= 20
    for kind in ("store", "request"):
        assert sum(len(c.query.items) for c in cases[kind]) > len(cases[kind])


def _check(got: list[dict], cs: list[Case], engine: str, source: str) -> None:
    for res, c in zip(got, cs, strict=True):
        assert res["history"]["source"] == source
        np.testing.assert_allclose(res["scores"], c.expected, rtol=0, atol=TOLERANCE[engine])


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_scorer_scores_equal_offline_scores(package, cases, engine):
    scorer = Scorer.load(package, engine, 1)
    for kind in ("store", "request"):
        cs = cases[kind]
        _check([scorer.score([c.query])[0] for c in cs], cs, engine, kind)  # one user per call: broadcast
        for i in range(0, len(cs), 8):  # eight users per call: each history repeated on its rows
            _check(scorer.score([c.query for c in cs[i:i + 8]]), cs[i:i + 8], engine, kind)


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_http_scores_equal_offline_scores(package, cases, engine):
    with TestClient(create_app(ServiceSettings(package=package, engine=engine))) as client:
        for kind in ("store", "request"):
            cs = cases[kind][:20]
            for c in cs:
                r = client.post("/v1/score", json=c.body())
                assert r.status_code == 200, r.text
                _check([r.json()], [c], engine, kind)
            r = client.post("/v1/score/batch", json={"requests": [c.body() for c in cs]})
            assert r.status_code == 200, r.text
            _check(r.json()["results"], cs, engine, kind)
