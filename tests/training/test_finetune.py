"""Fine-tuning to a new domain: only the allowed rows and projections move, every other weight stays bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dacdr.data.batches import BatchGatherer
from dacdr.data.features import Vocab, Vocabularies
from dacdr.evaluation import per_domain_metrics, predict
from dacdr.package import build_package, load_package, run_prepared
from dacdr.recipes.finetune import finetune
from dacdr.training.checkpoint import load_model
from dacdr.training.finetune import align_to_vocabularies, restrict_split
from tests.serving.helpers import train_tiny_run, without_domain

NEW = "target_b"


@pytest.fixture(scope="module")
def base_run(handmade_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    base_data = without_domain(handmade_path, NEW, root / "base-data")
    return train_tiny_run(base_data, root / "base", params={"domain_prior": True})  # its step-1 prior too


@pytest.fixture(scope="module")
def tuned(base_run, handmade_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft-out") / "tuned"
    report = finetune(base_run, handmade_path, NEW, out, epochs=2, lr=0.01, progress=False, log=lambda *_: None)
    return out, report


def test_frozen_parameters_are_unchanged_bit_for_bit(base_run, tuned):
    from dacdr.training.finetune import trainable_rows

    out, report = tuned
    base, _ = load_model(base_run)
    model, _ = load_model(out)
    prepared, _ = run_prepared(out)
    masks = trainable_rows(model, base.spec.vocab_sizes, prepared, NEW)
    assert {n: (None if m is None else int(m.sum())) for n, m in masks.items()} == report["trainable_tensors"]
    base_state, state = base.state_dict(), model.state_dict()
    checked_rows = 0
    for name, old in base_state.items():
        new = state[name]
        if name not in masks:
            assert torch.equal(new, old), f"frozen tensor {name} changed"
        elif masks[name] is not None:  # an embedding table: its frozen base rows must be identical
            frozen = ~masks[name][: old.shape[0]]
            assert torch.equal(new[: old.shape[0]][frozen], old[frozen]), f"frozen rows of {name} changed"
            checked_rows += int(frozen.sum())
    assert checked_rows > 0
    # what may train did train: the attention projections and the new domain's row (initialised at the mean)
    assert not torch.equal(state["item_attention.w_q.weight"], base_state["item_attention.w_q.weight"])
    assert not torch.equal(state["domain_attention.w_k.weight"], base_state["domain_attention.w_k.weight"])
    table = state["embeddings.tables.domain.weight"]
    start_row = base_state["embeddings.tables.domain.weight"][2:].mean(dim=0)
    assert not torch.allclose(table[prepared.vocabs["domain"].lookup(NEW)], start_row)
    # the domain prior (step 1): the new domain id's row starts at 0 (no preference) and trained
    assert masks["domain_prior.0"] is not None and int(masks["domain_prior.0"].sum()) == 1
    assert state["domain_prior.0"][prepared.vocabs["domain"].lookup(NEW)].abs().sum() > 0


def test_new_domain_row_trained_and_counts_reported(base_run, tuned):
    out, report = tuned
    prepared, _ = run_prepared(out)
    base_prepared, _ = run_prepared(base_run)
    model, _ = load_model(out)
    dom_row = prepared.vocabs["domain"].lookup(NEW)
    assert dom_row == len(base_prepared.vocabs["domain"])  # appended after the base rows
    assert report["trainable_tensors"]["embeddings.tables.domain.weight"] == 1
    # page_type "feed" and business_line "ads": "feed" is shared with the source domain, "ads" is new.
    assert "embeddings.tables.page_type.weight" not in report["trainable_tensors"]
    assert report["trainable_tensors"]["embeddings.tables.business_line.weight"] == 1
    total = sum(p.numel() for p in model.parameters())
    assert report["total_parameters"] == total
    assert 0 < report["trainable_parameters"] < total / 2
    assert report["train_seconds"] > 0 and report["train_samples"] > 0
    # "after" is the saved model's own score on the new domain's test rows; "before" that of the start weights
    tuned_prepared = restrict_split(prepared, NEW)
    preds = predict(model, BatchGatherer(tuned_prepared), tuned_prepared.split.test)
    assert report["after"]["all"] == pytest.approx(per_domain_metrics(tuned_prepared, tuned_prepared.split.test,
                                                                      preds)[NEW])
    assert report["before"]["all"]["auc"] != report["after"]["all"]["auc"]
    assert (out / "finetune.json").is_file() and (out / "vocabs.json").is_file()


def test_base_indices_never_move(base_run, tuned):
    out, _ = tuned
    base_prepared, _ = run_prepared(base_run)
    tuned_prepared, _ = run_prepared(out)
    for field, vocab in base_prepared.vocabs.vocabs.items():
        assert tuned_prepared.vocabs[field].values[: len(vocab.values)] == vocab.values, field


def test_align_to_vocabularies_reindexes_every_array(handmade_prepared):
    fields = handmade_prepared.vocabs.vocabs
    base = Vocabularies({f: Vocab(list(reversed(v.values[: max(1, len(v.values) // 2)]))) for f, v in fields.items()})
    aligned = align_to_vocabularies(handmade_prepared, base)
    for f, v in base.vocabs.items():
        assert aligned.vocabs[f].values[: len(v.values)] == v.values
    old, new = handmade_prepared, aligned

    def raw(prep, field, idx):
        return np.array(prep.vocabs[field].values, dtype=object)[np.asarray(idx) - 2]

    for key in ("item", "user", "domain"):
        assert (raw(old, key, old.samples[key]) == raw(new, key, new.samples[key])).all(), key
    items = np.unique(old.samples["item"])
    same_items = np.array([new.vocabs["item"].index[v] for v in raw(old, "item", items)])
    for j, f in enumerate(old.spec.item_fields):
        assert (raw(old, f, old.item_table[items, j]) == raw(new, f, new.item_table[same_items, j])).all(), f
    assert new.spec.vocab_sizes["item"] == len(new.vocabs["item"])


def test_errors_name_the_problem(base_run, handmade_path, tmp_path):
    with pytest.raises(ValueError, match="already known"):
        finetune(base_run, handmade_path, "target_a", tmp_path / "x", progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match="not a target domain"):
        finetune(base_run, handmade_path, "target_q", tmp_path / "y", progress=False, log=lambda *_: None)


def test_a_finetuned_run_packages_and_serves_its_new_domain(tuned, tmp_path):
    out, _ = tuned
    pkg = load_package(build_package(out, tmp_path / "pkg", log=lambda *_: None))
    entry = next(d for d in pkg.domains if d["domain"] == NEW)
    assert entry["index"] == pkg.vocabs["domain"].lookup(NEW) and entry["features"]["business_line"] == "ads"
    assert pkg.spec.vocab_sizes["domain"] == len(pkg.vocabs["domain"])
    from dacdr.serving.engines import TorchEngine
    from dacdr.serving.scoring import ScoreQuery, Scorer

    res = Scorer(pkg, TorchEngine(pkg)).score([ScoreQuery(3, NEW, [45, 46])])[0]
    assert len(res["scores"]) == 2 and res["unknown_items"] == []


def test_a_rerun_from_other_base_weights_starts_over(handmade_path, tmp_path):
    """Fine-tuning into a folder that holds a run tuned from another base model does not resume that run."""
    base_data = without_domain(handmade_path, NEW, tmp_path / "base-data")
    first, second = (train_tiny_run(base_data, tmp_path / f"base{s}", seed=s) for s in (0, 1))
    out = tmp_path / "tuned"
    kw = {"epochs": 1, "lr": 0.01, "progress": False}
    finetune(first, handmade_path, NEW, out, log=lambda *_: None, **kw)
    said: list[str] = []
    report = finetune(second, handmade_path, NEW, out, log=lambda *a: said.append(" ".join(map(str, a))), **kw)
    assert any("starting over" in line for line in said)
    assert report["epochs_run"] == 1 and report["base_run"] == str(second)
    expected = load_model(second)[0].state_dict()
    tuned = load_model(out)[0].state_dict()
    # a weight fine-tuning never touches (the prediction MLP) is the second base model's, not the first's
    name = next(k for k in expected if k.startswith("predictor."))
    assert torch.equal(tuned[name], expected[name])
