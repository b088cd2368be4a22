"""`dacdr bench`: the paper's Table 2 (every baseline and the DACDR variants) on the synthetic world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dacdr.cli.app import app, command_threads, console, user_errors


@app.command()
@user_errors
def bench(
    preset: Annotated[str, typer.Option(help="synthetic preset to generate (industrial: the paper's Table 1 shape)")] = (
        "industrial"
    ),
    seeds: Annotated[int, typer.Option(min=1, help="model seeds (ignored with --quick: 1 seed)")] = 3,
    quick: Annotated[bool, typer.Option("--quick", help="1 seed, smaller world, few steps: a few minutes")] = False,
    out: Annotated[Path, typer.Option(help="output directory")] = Path("bench-out"),
    models: Annotated[str | None, typer.Option(help="comma-separated subset of models (default: all rows)")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads with --jobs 1 (default: the free share of the cores, logged)")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="runs at once, one process and one torch thread each")] = 2,
    epochs: Annotated[int | None, typer.Option(min=1, help="epochs per phase instead of the budget's 2 "
                                                "(early stopping still applies)")] = None,
) -> None:
    """Train every Table 2 model on identical data per seed; write table.md, results.csv, metrics.json, a PNG."""

    from dacdr.recipes.bench import bench_settings, run_bench

    command_threads(threads)
    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    settings = bench_settings(preset, seeds=seeds, quick=quick, jobs=jobs)
    if epochs:
        settings.train = settings.train.model_copy(update={"epochs": epochs})
    run_bench(out, settings, models=names, console=console)
