"""The attention study's scripts: benchmarks/mechanism_parts.py (what selection is worth, no training) on the tiny
mechanism world, with the mean and the best-match item-level part, benchmarks/plugin_quality.py (the plug-in's
parts and the domain normaliser) on the tiny world, and attention_study.py's world labels."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from dacdr.data.synthetic import generate, get_preset
from tests.benchmark_scripts import BENCH, load

mechanism_parts = load(BENCH / "mechanism_parts.py")
plugin_quality = load(BENCH / "plugin_quality.py")


@pytest.mark.parametrize("item_part", ["mean", "best"])
def test_mechanism_parts_scores_every_target(tmp_path, item_part) -> None:
    root = generate(get_preset("mechanism-tiny", mechanism={"item_part": item_part}), tmp_path / item_part, seed=0)
    rows = mechanism_parts.parts(root)
    assert [r["target"] for r in rows] == ["target_1", "target_2"]
    for r in rows:
        assert r["rows"] > 100
        # the exact term is the labels' own: it lifts the plug-in, and taking the selection away loses AUC
        assert r["plug-in + exact term"] > r["plug-in"] + 0.05
        assert r["plug-in + exact term"] > r["+ term, both unselected"]
        assert r["oracle"] >= r["plug-in + exact term"] - 0.02


def test_mechanism_parts_refuses_a_world_without_the_mechanism(tmp_path) -> None:
    root = generate(get_preset("mechanism-tiny", mechanism={"strength": 0.0}), tmp_path / "off", seed=0)
    with pytest.raises(SystemExit, match="no mechanism"):
        mechanism_parts.parts(root)


def test_attention_study_world_labels() -> None:
    # in a subprocess: importing the study registers its study-only probes, which this test session must not see
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import attention_study as a\n"
        "print(json.dumps({w: a.synthetic_config(w).model_dump(mode='json') for w in "
        "['mechanism-i3-b0-best', 'mechanism-i2', 'mechanism-s0.5', 'demo']}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, check=True)
    cfg = json.loads(out.stdout.strip().splitlines()[-1])
    base = get_preset("mechanism")
    i3 = cfg["mechanism-i3-b0-best"]
    assert i3["mechanism"] | {"item_weight": 1.0, "item_part": "mean"} == base.mechanism.model_dump(mode="json")
    assert (i3["mechanism"]["item_weight"], i3["mechanism"]["item_part"]) == (3.0, "best")
    assert i3["brand_latent_noise"] == 0.0
    assert math.isclose(i3["item_latent_noise"] ** 2, base.brand_latent_noise**2 + base.item_latent_noise**2)
    assert cfg["mechanism-i2"]["mechanism"]["item_weight"] == 2.0
    assert cfg["mechanism-i2"]["brand_latent_noise"] == base.brand_latent_noise
    assert cfg["mechanism-s0.5"]["mechanism"]["strength"] == 0.5
    assert cfg["demo"] == get_preset("demo").model_dump(mode="json")


@pytest.mark.parametrize("with_source", [False, True])
def test_plugin_quality_splits_the_plug_in_and_prices_the_normaliser(tmp_path, with_source) -> None:
    root = generate(get_preset("tiny"), tmp_path / "tiny", seed=0)
    out = plugin_quality.quality_table(root, with_source=with_source, log=lambda *_: None)
    assert list(out["rows"]) == ["target_1", "target_2", "target_3"]
    for oracle, transferable, histogram, plugin, estimated in out["rows"].values():
        assert all(0.5 < v < 1.0 for v in (oracle, transferable, histogram, plugin, estimated))
        assert plugin > histogram  # the true quality is part of the plug-in: without it the AUC falls
        assert oracle > histogram
    assert out["penalty"] in plugin_quality.PENALTIES
    if not with_source:  # the targets' clicks reveal some of the true quality
        assert out["correlation"] > 0.1
    norm = plugin_quality.normalisation_table(*out["frames"])
    assert list(norm) == list(out["rows"]) and all(0.5 < a < 1.0 and 0.5 < b < 1.0 for a, b in norm.values())


def test_throughput_levers_keep_the_scoring_function_signature_and_maths() -> None:
    """`train_throughput.py`'s stand-ins for `two_step_attention` (`chunkN`, and the graph `compile-scoring`
    compiles) take its arguments — the domain prior's bias and the history mean's row included — and give its
    outputs, so that a lever measures the same model."""
    import torch

    import dacdr.models.dacdr as dacdr_module
    from dacdr.models.layers import two_step_attention

    bench = load(BENCH / "train_throughput.py")
    gen = torch.Generator().manual_seed(0)
    b, j, md, length, k = 10, 6, 2, 7, 4
    q, s = torch.randn(b, j, k, generator=gen), torch.randn(b, length, k, generator=gen)
    mask = torch.rand(b, length, generator=gen) > 0.3
    mask[0] = False  # an empty history
    bias_d, mix = torch.randn(b, length, generator=gen), torch.tensor(0.2)
    want = two_step_attention(q, s, mask, mix, md, True, True, bias_d, True)
    with bench.chunked_scoring(3):
        chunked = dacdr_module.two_step_attention(q, s, mask, mix, md, True, True, bias_d, True)
    graph = bench._scoring_graph(q, s, mask, mix, md, True, True, bias_d, True)
    for got in (chunked, graph):
        for a, w in zip(got, want, strict=True):
            torch.testing.assert_close(a, w, atol=1e-5, rtol=1e-5)
