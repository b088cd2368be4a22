"""Packages: exports are verified, the manifest covers every field, entries stay inside the package, sizes are
checked before anything is built, and `package --overwrite` killed at any step leaves a package."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dacdr.export import export_package, exported_onnx_for
from dacdr.fsutil import FAULT_ENV
from dacdr.package import MANIFEST, PackageError, build_package, load_package
from dacdr.serving.scoring import ScoreQuery, Scorer
from tests.reliability.conftest import QUIET
from tests.reliability.helpers import copy_package, reseal

# ------------------------------------------------------------------------------------------ 1. exports


def test_export_is_listed_in_the_manifest(packages):
    manifest = json.loads((packages[0] / MANIFEST).read_text())
    assert {"model.onnx", "model.onnx.json"} <= set(manifest["files"])
    assert load_package(packages[0]).version == manifest["package_version"]


def test_a_torchscript_export_is_listed_and_loads(packages, tmp_path):
    pkg = copy_package(packages[0], tmp_path / "pkg")
    export_package(pkg, "torchscript")
    manifest = load_package(pkg).manifest
    assert {"model.onnx", "model.torchscript.pt", "model.torchscript.pt.json"} <= set(manifest["files"])
    module = torch.jit.load(str(pkg / "model.torchscript.pt"))
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in load_package(pkg).model.parameters())
    assert not list(Path.cwd().glob("<_io.BytesIO*")), "the export went to a stray file"


def test_another_models_export_copied_in_is_refused(packages, tmp_path):
    """The probe's attack: another model's `model.onnx` copied over this package's (sidecar untouched)."""
    pkg = copy_package(packages[0], tmp_path / "pkg")
    (pkg / "model.onnx").write_bytes((packages[1] / "model.onnx").read_bytes())
    with pytest.raises(PackageError, match=r"^model.onnx: sha256 differs"):
        load_package(pkg)


def test_an_unlisted_export_with_a_forged_sidecar_is_refused(packages, runs, tmp_path):
    """A package without an export, given another model's graph and a sidecar naming this package's version."""
    pkg = build_package(runs[0], tmp_path / "pkg", **QUIET)
    version = load_package(pkg).version
    (pkg / "model.onnx").write_bytes((packages[1] / "model.onnx").read_bytes())
    side = json.loads((packages[1] / "model.onnx.json").read_text()) | {"package_version": version}
    (pkg / "model.onnx.json").write_text(json.dumps(side))
    with pytest.raises(PackageError, match=r"model.onnx: present but not listed"):
        load_package(pkg)
    with pytest.raises(PackageError, match=r"model.onnx: present but not listed"):
        Scorer.load(pkg, "onnx")


def test_a_garbage_export_resealed_is_a_clear_error(packages, tmp_path):
    pkg = copy_package(packages[0], tmp_path / "pkg")
    (pkg / "model.onnx").write_bytes(b"this is not an ONNX graph" * 10)
    reseal(pkg)
    load_package(pkg)  # the checksums agree: the graph itself is what is wrong
    with pytest.raises(PackageError, match=r"^model.onnx: not a loadable ONNX graph"):
        Scorer.load(pkg, "onnx")


def test_the_onnx_engine_serves_the_verified_export(packages):
    scorer = Scorer.load(packages[0], "onnx")
    assert exported_onnx_for(scorer.pkg) is not None  # the package's own checked model.onnx, not a new export
    assert scorer.version == load_package(packages[0]).version
    query = [ScoreQuery(3, "target_a", [30, 31, 32])]  # and its scores are the eager model's
    np.testing.assert_allclose(scorer.score(query)[0]["scores"], Scorer.load(packages[0]).score(query)[0]["scores"],
                               rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ 6. manifest


@pytest.mark.parametrize("field,value", [("package_version", "DACDR-000000000000"), ("model_name", "PLE"),
                                         ("history_len", 3), ("source_run", "/elsewhere")])
def test_every_manifest_field_is_covered_by_the_checksum(packages, tmp_path, field, value):
    pkg = copy_package(packages[0], tmp_path / "pkg")
    manifest = json.loads((pkg / MANIFEST).read_text())
    manifest[field] = value
    (pkg / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="manifest edited"):
        load_package(pkg)


@pytest.mark.parametrize("entry", ["../outside.json", "/etc/hostname", "sub/model.json", "..", "extra.bin"])
def test_manifest_entries_must_be_package_files(packages, tmp_path, entry):
    pkg = copy_package(packages[0], tmp_path / "pkg")
    manifest = json.loads((pkg / MANIFEST).read_text())
    manifest["files"][entry] = "0" * 64
    reseal(pkg, files=manifest["files"])
    with pytest.raises(PackageError, match="are not package files"):
        load_package(pkg)


def test_a_symlinked_file_is_refused(packages, tmp_path):
    """Same content, so the same sha256: the link itself is what is refused (it could point anywhere later)."""
    pkg = copy_package(packages[0], tmp_path / "pkg")
    outside = tmp_path / "outside-vocabs.json"
    (pkg / "vocabs.json").rename(outside)
    (pkg / "vocabs.json").symlink_to(outside)
    with pytest.raises(PackageError, match="vocabs.json: is a symbolic link"):
        load_package(pkg)


@pytest.mark.parametrize("name", ["model.safetensors", "model.json", "store.sqlite", "model.onnx"])
def test_a_missing_file_error_reveals_no_path(packages, tmp_path, name):
    pkg = copy_package(packages[0], tmp_path / "secret-dir" / "pkg")
    (pkg / name).unlink()
    with pytest.raises(PackageError) as err:
        load_package(pkg)
    assert str(err.value).startswith(f"{name}: missing")
    assert "secret-dir" not in str(err.value) and "/" not in str(err.value)


def test_an_old_schema_is_refused_with_advice(packages, tmp_path):
    pkg = copy_package(packages[0], tmp_path / "pkg")
    reseal(pkg, schema_version=1)
    with pytest.raises(PackageError, match="schema 1.*rebuild it"):
        load_package(pkg)


# ------------------------------------------------------------------------------------------ 5. sizes


def test_a_resealed_huge_dim_fails_before_anything_is_allocated(packages, tmp_path, monkeypatch):
    """`dim: 200000` in model.json, resealed: the shapes are compared with the weights on the meta device, so
    no real model of that size is ever built."""
    pkg = copy_package(packages[0], tmp_path / "pkg")
    desc = json.loads((pkg / "model.json").read_text())
    desc["params"]["dim"] = 200_000
    (pkg / "model.json").write_text(json.dumps(desc))
    reseal(pkg)
    import dacdr.training.checkpoint as ckpt

    real, devices = ckpt.create_model, []

    def spy(*args, **kwargs):
        devices.append(torch.empty(0).device.type)  # the default device the model would be built on
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "create_model", spy)
    with pytest.raises(PackageError, match=r"weights do not match 'DACDR'.*implies \[\d+, 200000\]"):
        load_package(pkg)
    assert devices == ["meta"], f"a real model was built: {devices}"


def test_an_unbuildable_description_is_a_package_error(packages, tmp_path):
    pkg = copy_package(packages[0], tmp_path / "pkg")
    desc = json.loads((pkg / "model.json").read_text())
    desc["params"]["heads"] = 3  # dim 8 is not divisible by 3
    (pkg / "model.json").write_text(json.dumps(desc))
    reseal(pkg)
    with pytest.raises(PackageError, match="model.json: .*heads"):
        load_package(pkg)


# ------------------------------------------------------------------------------------------ 4. --overwrite


def _build_killed_at(run: Path, out: Path, fault: str) -> None:
    code = ("from dacdr.package import build_package; import sys; "
            "build_package(sys.argv[1], sys.argv[2], overwrite=True, log=lambda *_: None)")
    env = dict(os.environ, **{FAULT_ENV: fault, "OMP_NUM_THREADS": "1"})
    proc = subprocess.run([sys.executable, "-c", code, str(run), str(out)], env=env, capture_output=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"{fault} not reached: {proc.stderr.decode()[-2000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("fault,survivor", [("package.aside", 0), ("package.swapped", 1)])
def test_overwrite_killed_between_its_renames_leaves_a_package(runs, tmp_path, fault, survivor):
    """Killed after moving the old package aside (before the new one is in), or after the swap: the next reader
    finds a whole package, the old or the new one, and nothing is left behind once a build has run."""
    out = build_package(runs[0], tmp_path / "pkg", **QUIET)
    versions = [load_package(out).version]
    versions.append(load_package(build_package(runs[1], tmp_path / "other", **QUIET)).version)
    _build_killed_at(runs[1], out, fault)
    assert load_package(out).version == versions[survivor]
    build_package(runs[0], out, overwrite=True, **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "pkg"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fault injection forks a child")
@pytest.mark.parametrize("fault,exported", [("export.aside", False), ("export.swapped", True)])
def test_export_killed_while_republishing_leaves_a_whole_package(runs, tmp_path, fault, exported):
    pkg = build_package(runs[0], tmp_path / "pkg", **QUIET)
    version = load_package(pkg).version
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.environ[FAULT_ENV] = fault
            export_package(pkg, "onnx")
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{fault} was never reached"
    loaded = load_package(pkg)
    assert loaded.version == version
    assert ("model.onnx" in loaded.manifest["files"]) == exported == (pkg / "model.onnx").is_file()
