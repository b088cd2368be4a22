"""Load a script of benchmarks/ as a module (they are scripts, not a package), for the tests that drive them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(path: Path) -> ModuleType:
    """The module of the script at `path` (e.g. ``BENCH / "mechanism_parts.py"``), executed once per call."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
