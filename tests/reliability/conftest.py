from __future__ import annotations

import pytest

from dacdr.export import export_package
from dacdr.package import build_package
from tests.serving.helpers import train_tiny_run

QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="session")
def runs(handmade_path, tmp_path_factory):
    """Two tiny DACDR runs (seeds 0 and 1): two different models of the same data."""
    root = tmp_path_factory.mktemp("rel-runs")
    return train_tiny_run(handmade_path, root / "run0", seed=0), train_tiny_run(handmade_path, root / "run1", seed=1)


@pytest.fixture(scope="session")
def packages(runs, tmp_path_factory):
    """Their packages, side by side, each with an ONNX export inside."""
    root = tmp_path_factory.mktemp("rel-pkgs")
    out = []
    for i, run in enumerate(runs):
        pkg = build_package(run, root / f"pkg{i}", **QUIET)
        export_package(pkg, "onnx")
        out.append(pkg)
    return out
