"""Export: ONNX and TorchScript agree with eager PyTorch on fresh inputs of any batch and sequence length."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dacdr.export import export_package, exported_onnx_for, onnx_bytes, torchscript_module
from dacdr.package import PackageError, build_package, load_package
from tests.serving.helpers import train_tiny_run

SHAPES = [(1, 1), (5, 8), (3, 17)]  # (batch, length): 17 > the model's max_len and the traced length


@pytest.fixture(scope="module")
def package(handmade_path, tmp_path_factory):
    run = train_tiny_run(handmade_path, tmp_path_factory.mktemp("run") / "run")
    return build_package(run, tmp_path_factory.mktemp("pkg") / "pkg", log=lambda *_: None)


def random_inputs(spec, batch, length, gen, empty_rows=()):
    def ids(fields, *shape):
        cols = [torch.randint(0, spec.vocab_sizes[f], shape, generator=gen) for f in fields]
        return torch.stack(cols, dim=-1)

    mask = torch.rand(batch, length, generator=gen) < 0.7
    mask[:, -1] = True
    for r in empty_rows:
        mask[r] = False  # an empty source history
    return {"seq": ids(spec.sequence_fields, batch, length), "seq_mask": mask,
            "item": ids(spec.item_fields, batch), "domain": ids(spec.domain_fields, batch)}


def cases(spec):
    gen = torch.Generator().manual_seed(7)
    for batch, length in SHAPES:
        yield random_inputs(spec, batch, length, gen, empty_rows=(0,))
        yield random_inputs(spec, batch, length, gen)


def test_onnx_matches_eager(package):
    pkg = load_package(package)
    model = pkg.model
    session = ort.InferenceSession(onnx_bytes(model), providers=["CPUExecutionProvider"])
    for inputs in cases(model.spec):
        with torch.no_grad():
            want = model(*inputs.values()).numpy()
        got = session.run(["score"], {k: v.numpy() for k, v in inputs.items()})[0]
        assert got.shape == want.shape
        assert np.isfinite(got).all()
        assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize("empty", [False, True])
def test_onnx_one_history_against_many_items(package, empty):
    """The exported graph takes one user's history (batch 1) for N items, like the eager model."""
    pkg = load_package(package)
    model = pkg.model
    assert model.broadcasts_history
    session = ort.InferenceSession(onnx_bytes(model), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "users"
    gen = torch.Generator().manual_seed(11)
    user = random_inputs(model.spec, 1, 6, gen, empty_rows=(0,) if empty else ())
    items = random_inputs(model.spec, 13, 6, gen)["item"]
    inputs = {"seq": user["seq"], "seq_mask": user["seq_mask"], "item": items, "domain": user["domain"]}
    with torch.no_grad():
        want = model(user["seq"].expand(13, -1, -1), user["seq_mask"].expand(13, -1), items,
                     user["domain"].expand(13, -1)).numpy()
    got = session.run(["score"], {k: v.numpy() for k, v in inputs.items()})[0]
    assert got.shape == (13,)
    assert np.abs(got - want).max() <= 1e-5


def test_torchscript_matches_eager(package, tmp_path):
    pkg = load_package(package)
    model = pkg.model
    path = tmp_path / "m.pt"
    torchscript_module(model).save(str(path))
    loaded = torch.jit.load(str(path))
    for inputs in cases(model.spec):
        with torch.no_grad():
            want, got = model(*inputs.values()), loaded(*inputs.values())
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-5


def test_export_package_writes_files_with_a_version_sidecar(package, tmp_path):
    pkg = load_package(package)
    onnx_path = export_package(package, "onnx")
    assert onnx_path == package / "model.onnx"
    side_text = (package / "model.onnx.json").read_text()
    side = json.loads(side_text)
    assert side["package_version"] == pkg.version
    assert side["dynamic_axes"]["seq"] == {"0": "users", "1": "length"}  # DACDR broadcasts one history
    assert side["dynamic_axes"]["item"] == {"0": "batch"}
    assert exported_onnx_for(load_package(package)) == onnx_path.read_bytes()
    # An export's sidecar edited to another package version is refused (it is checksummed in the manifest).
    (package / "model.onnx.json").write_text(json.dumps(side | {"package_version": "other"}))
    with pytest.raises(PackageError, match=r"model.onnx.json: sha256 differs"):
        load_package(package)
    (package / "model.onnx.json").write_text(side_text)
    ts = export_package(package, "torchscript", tmp_path / "model.pt")
    assert ts.is_file() and (tmp_path / "model.pt.json").is_file()
    with pytest.raises(ValueError, match="--format"):
        export_package(package, "tflite")  # type: ignore[arg-type]


def test_onnx_matches_eager_with_the_count_and_mass_features(package):
    """The count features (equality against the candidate's ids) and step 1's mass export and agree."""
    from dacdr.models import create_model

    spec = load_package(package).model.spec
    torch.manual_seed(0)
    model = create_model("DACDR", spec, match_counts=True, domain_mass_feature=True).eval()
    session = ort.InferenceSession(onnx_bytes(model), providers=["CPUExecutionProvider"])
    for inputs in cases(spec):
        inputs["item"][0] = inputs["seq"][0, -1, : inputs["item"].shape[1]]  # a candidate seen in the history
        with torch.no_grad():
            want = model(*inputs.values()).numpy()
        got = session.run(["score"], {k: v.numpy() for k, v in inputs.items()})[0]
        assert np.abs(got - want).max() <= 1e-5
