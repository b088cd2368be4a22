"""Model packages: round trip, the history store, and a clear error for every missing or tampered file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dacdr.data.dataset import read_spec
from dacdr.package import MANIFEST, PackageError, build_package, load_package, run_prepared
from dacdr.training.checkpoint import load_model
from tests.serving.helpers import train_run, train_tiny_run


@pytest.fixture(scope="module")
def run_dir(handmade_path, tmp_path_factory):
    return train_tiny_run(handmade_path, tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def package(run_dir, tmp_path_factory):
    return build_package(run_dir, tmp_path_factory.mktemp("pkg") / "pkg", log=lambda *_: None)


def test_round_trip_keeps_weights_vocabularies_and_metrics(run_dir, package):
    pkg = load_package(package)
    model, _ = load_model(run_dir)
    for (k, a), (_, b) in zip(model.state_dict().items(), pkg.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    manifest = json.loads((package / MANIFEST).read_text())
    assert manifest["schema_version"] == 2
    assert pkg.version == manifest["package_version"] and pkg.version.startswith("DACDR-")
    assert pkg.metrics["test"]["cold"], "metrics of the run travel with the package"
    assert [d["domain"] for d in pkg.domains] == ["source", "target_a", "target_b"]
    assert pkg.domains[0]["role"] == "source" and pkg.domains[1]["features"]["page_type"] == "banner"
    prepared, _ = run_prepared(run_dir)
    np.testing.assert_array_equal(pkg.item_table, prepared.item_table)
    assert pkg.vocabs["item"].values == prepared.vocabs["item"].values
    assert not list(package.glob("*.pt")) and not list(package.glob("*.pkl")), "nothing pickled"


def test_store_holds_the_latest_training_period_behaviours(run_dir, package, handmade_path):
    pkg = load_package(package)
    prepared, _ = run_prepared(run_dir)
    test_start = read_spec(handmade_path).test_start
    ev = prepared.events
    fields = prepared.spec.sequence_fields
    users = np.unique(ev["user"])
    assert pkg.store.n_users > 0
    checked = 0
    for u in users[:40]:
        raw = prepared.vocabs["user"].values[u - 2]
        sel = (ev["user"] == u) & (ev["timestamp"] < test_start)
        want = np.stack([ev[f][sel] for f in fields], axis=1)[-pkg.store.history_len:]
        got = pkg.store.history(raw)
        if len(want) == 0:
            assert got is None
        else:
            np.testing.assert_array_equal(got, want)
            checked += 1
    assert checked > 10
    assert pkg.store.history("no-such-user") is None


def test_history_length_is_configurable(run_dir, tmp_path):
    pkg = load_package(build_package(run_dir, tmp_path / "short", history_len=3, log=lambda *_: None))
    assert pkg.store.history_len == 3
    lengths = [len(pkg.store.history(u)) for u in pkg.vocabs["user"].values[:50] if pkg.store.history(u) is not None]
    assert max(lengths) == 3


def test_refuses_to_overwrite(run_dir, package):
    with pytest.raises(FileExistsError):
        build_package(run_dir, package, log=lambda *_: None)


def _copy(package, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(package, dst)
    return dst


@pytest.mark.parametrize("name", ["model.safetensors", "vocabs.json", "store.sqlite", "tables.safetensors",
                                  "model.json", "domains.json"])
def test_missing_file_is_named(package, tmp_path, name):
    pkg = _copy(package, tmp_path)
    (pkg / name).unlink()
    with pytest.raises(PackageError, match=rf"{name}: missing"):
        load_package(pkg)


@pytest.mark.parametrize("name", ["model.safetensors", "store.sqlite", "metrics.json"])
def test_tampered_file_is_named(package, tmp_path, name):
    pkg = _copy(package, tmp_path)
    data = bytearray((pkg / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (pkg / name).write_bytes(bytes(data))
    with pytest.raises(PackageError, match=rf"{name}: sha256 differs"):
        load_package(pkg)


def test_edited_manifest_and_missing_manifest(package, tmp_path):
    pkg = _copy(package, tmp_path)
    manifest = json.loads((pkg / MANIFEST).read_text())
    manifest["files"]["vocabs.json"] = "0" * 64
    (pkg / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="manifest edited"):
        load_package(pkg)
    (pkg / MANIFEST).unlink()
    with pytest.raises(PackageError, match=r"manifest.json: missing"):
        load_package(pkg)


def test_mismatched_but_consistently_checksummed_file_is_named(package, tmp_path):
    """A vocabulary from another dataset, with the manifest re-signed: caught by the consistency checks."""
    from dacdr.package import _manifest_checksum, sha256_file

    pkg = _copy(package, tmp_path)
    vocabs = json.loads((pkg / "vocabs.json").read_text())
    vocabs["item"] = vocabs["item"][:-3]
    (pkg / "vocabs.json").write_text(json.dumps(vocabs))
    manifest = json.loads((pkg / MANIFEST).read_text())
    manifest["files"]["vocabs.json"] = sha256_file(pkg / "vocabs.json")
    manifest["checksum"] = _manifest_checksum(manifest)
    (pkg / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=r"vocabs.json: sizes do not match model.json"):
        load_package(pkg)


def test_a_run_trained_on_streamed_data_packages_with_the_same_store(run_dir, package, handmade_path, tmp_path):
    """`data.streaming: true` prepares out of core; its run packages like any other, and the history store
    (read from the memory-mapped events) equals the in-memory run's."""
    import yaml

    from dacdr.config import RunConfig

    cfg = RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"streaming": True, "cache_dir": str(tmp_path)})})
    stream_run = tmp_path / "stream-run"
    train_run(cfg, run_dir=stream_run)
    streamed = load_package(build_package(stream_run, tmp_path / "pkg", log=lambda *_: None))
    memory = load_package(package)
    assert streamed.store.n_users == memory.store.n_users > 0
    np.testing.assert_array_equal(streamed.item_table, memory.item_table)
    for user in memory.vocabs["user"].values[:50]:
        a, b = streamed.store.history(user), memory.store.history(user)
        assert (a is None and b is None) or np.array_equal(a, b), user
