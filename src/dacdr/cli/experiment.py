"""Real-data commands: experiment, convert, export-split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dacdr.cli.app import app, command_threads, console, user_errors


def _params(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--param expects name=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out


@app.command()
@user_errors
def experiment(
    config: Annotated[Path, typer.Argument(help="experiment config (configs/experiments/*.yaml)")],
    seeds: Annotated[int | None, typer.Option(min=1, help="use the first N of the config's seeds")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="smoke run: 1 seed, 1 beta, 1 short epoch")] = False,
    out: Annotated[Path | None, typer.Option(help="output directory (default runs/experiments/<name>)")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="fill a {name} in data paths: name=value")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: the free share of the cores, logged)")] = None,
) -> None:
    """Run an experiment on real data: convert, split per beta and seed, train the models, report."""

    from dacdr.recipes.experiment import load_experiment, run_experiment

    command_threads(threads)
    cfg = load_experiment(config, _params(param))
    run_experiment(cfg, out or Path("runs/experiments") / cfg.name, seeds=seeds, quick=quick, console=console)


@app.command()
@user_errors
def convert(
    config: Annotated[Path, typer.Argument(help="experiment config, or a bare conversion config (its `data:`)")],
    out: Annotated[Path, typer.Option(help="dataset directory to write")],
    param: Annotated[list[str] | None, typer.Option("--param", help="fill a {name} in data paths: name=value")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing directory")] = False,
) -> None:
    """Convert raw files (Amazon, RecBole, CSV/Parquet, CDRIB) into the dacdr dataset layout."""
    from pydantic import ValidationError

    from dacdr.config import ConfigError, format_validation_error, read_yaml_mapping
    from dacdr.data.loaders import convert as run_convert
    from dacdr.data.loaders import convert_config
    from dacdr.recipes.experiment import _substitute, load_experiment

    raw = read_yaml_mapping(config)
    if "data" in raw:
        data = load_experiment(config, _params(param)).data
    else:
        params = {**(raw.pop("params", None) or {}), **_params(param)}
        try:
            data = convert_config(_substitute(raw, {k: str(v) for k, v in params.items()}))
        except ValidationError as e:  # each line names the format and the field
            raise ConfigError(format_validation_error(e, str(config))) from e
        data = data.resolve(config.parent)
    run_convert(data, out, overwrite=overwrite, log=console.print)


@app.command("export-split")
@user_errors
def export_split(
    dataset: Annotated[Path, typer.Argument(help="a rating dataset directory (docs/data-format.md)")],
    out: Annotated[Path, typer.Option(help="folder for the exported files")],
    beta: Annotated[float, typer.Option(help="cold-start share of overlapping users")] = 0.2,
    seed: Annotated[int, typer.Option(help="split seed")] = 900,
    mode: Annotated[str, typer.Option(help="leak-free | ptupcdr (whole source history)")] = "ptupcdr",
    target: Annotated[str | None, typer.Option(help="target domain (default: the first)")] = None,
    valid_share: Annotated[float, typer.Option(help="share of training users held out for validation")] = 0.1,
    fmt: Annotated[str, typer.Option("--format", help="output format; only 'ptupcdr'")] = "ptupcdr",
) -> None:
    """Write a P2 split in the PTUPCDR code's on-disk format (docs/datasets.md), so it runs on identical data."""
    from dacdr.config import DataConfig
    from dacdr.data.prepare import prepare
    from dacdr.data.ptupcdr import FILES, export_ptupcdr

    if fmt != "ptupcdr":
        raise ValueError(f"--format {fmt!r}: only 'ptupcdr' is supported")
    if mode not in ("leak-free", "ptupcdr"):
        raise ValueError(f"--mode {mode!r}: expected 'leak-free' or 'ptupcdr'")
    if not 0 < beta < 1:
        raise ValueError(f"--beta {beta}: must lie in (0, 1)")
    prepared = prepare(DataConfig(path=str(dataset), protocol="users", cold_start_share=beta, split_seed=seed,
                                  valid_share=valid_share, sequence_cutoff="all" if mode == "ptupcdr" else "before"))
    path = export_ptupcdr(prepared, out, target)
    console.print(f"wrote {', '.join(FILES)} (+ valid.csv, users.csv, items.csv, ptupcdr.json) to {path}")
