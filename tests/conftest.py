from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from handmade import handmade_dataset  # noqa: E402


@pytest.fixture(scope="session")
def handmade_path(tmp_path_factory) -> Path:
    return handmade_dataset(tmp_path_factory.mktemp("handmade") / "data")


@pytest.fixture(scope="session")
def handmade_prepared(handmade_path):
    from dacdr.config import DataConfig
    from dacdr.data.prepare import prepare

    return prepare(DataConfig(path=str(handmade_path), max_len=8))


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> Path:
    from dacdr.data.synthetic import generate

    return generate("tiny", tmp_path_factory.mktemp("tiny") / "data", seed=0)


@pytest.fixture(scope="session")
def tiny_prepared(tiny_path):
    from dacdr.config import DataConfig
    from dacdr.data.prepare import prepare

    return prepare(DataConfig(path=str(tiny_path), max_len=20))
