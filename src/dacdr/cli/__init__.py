"""The `dacdr` command line. Each command group lives in its own module and registers on `app`."""

from __future__ import annotations

from dacdr.cli import bench as _bench  # noqa: F401  (registers bench)
from dacdr.cli import core as _core  # noqa: F401  (registers demo, generate, train, evaluate, models)
from dacdr.cli import deploy as _deploy  # noqa: F401  (registers package, export, serve, finetune)
from dacdr.cli import experiment as _experiment  # noqa: F401  (registers experiment, convert, export-split)
from dacdr.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
