"""Core commands: demo, generate, train, evaluate, models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml

from dacdr.cli.app import app, command_threads, console, user_errors


@app.command()
@user_errors
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="1 seed, smaller data: about a minute")] = False,
    seeds: Annotated[int, typer.Option(min=1, help="model seeds (ignored with --quick)")] = 3,
    out: Annotated[Path, typer.Option(help="output directory")] = Path("demo-out"),
    threads: Annotated[int | None, typer.Option(help="torch threads (default: the free share of the cores, logged)")] = None,
    preset: Annotated[str, typer.Option(help="synthetic preset; `tiny` makes a seconds-long smoke run")] = "demo",
) -> None:
    """Generate the synthetic demo world, train DACDR, its ablations and DNN-multi, report vs the oracle."""

    from dacdr.recipes.demo import run_demo

    command_threads(threads)
    run_demo(out, seeds=seeds, quick=quick, console=console, preset=preset)


@app.command()
@user_errors
def generate(
    preset: Annotated[str, typer.Argument(help="a synthetic preset: tiny, demo, industrial, mechanism, scale, ...")],
    out: Annotated[Path, typer.Option(help="dataset directory to write")],
    seed: Annotated[int, typer.Option(help="world seed")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing directory")] = False,
    summary: Annotated[bool, typer.Option(help="print per-domain statistics and the reference AUCs")] = True,
) -> None:
    """Generate a synthetic cross-domain click log in the dacdr dataset layout (docs/synthetic.md)."""
    import time

    from dacdr.data.synthetic import generate as gen
    from dacdr.data.synthetic import get_preset, summarize

    start = time.perf_counter()
    path = gen(get_preset(preset), out, seed=seed, overwrite=overwrite)
    console.print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    if summary:
        for domain, stats in summarize(path).items():
            console.print(domain, " ".join(f"{k}={v:.4g}" for k, v in stats.items()), soft_wrap=True)


def _parse_overrides(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


@app.command()
@user_errors
def train(
    config: Annotated[Path, typer.Argument(help="YAML run config (see configs/)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. train.epochs=3")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (overrides the config's `out`)")] = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run in the same directory")] = True,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="processes (DistributedDataParallel: gloo on "
                                       "CPU, NCCL on GPU); for several hosts use torchrun, see docs/scaling.md")] = 1,
) -> None:
    """Train one model from a config; the best checkpoint and test metrics land in the run directory.

    Before training it prints the memory its embedding tables take (weights, and in training with AdamW).
    """
    from dacdr.config import load_run_config
    from dacdr.recipes.train import train as launch_train

    cfg = load_run_config(config, _parse_overrides(set_ or []))
    if nproc == 1 and not cfg.train.num_threads:  # several processes: each rank takes its share itself
        command_threads(None)
    results = launch_train(cfg, nproc=nproc, run_dir=out, resume=resume)
    if results is not None:
        _print_results(results)


@app.command()
@user_errors
def evaluate(run_dir: Annotated[Path, typer.Argument(help="a run directory written by `dacdr train`")]) -> None:
    """Re-evaluate a run's best checkpoint on its test split."""
    from dacdr.data.prepare import prepare
    from dacdr.training.rundir import RunDir
    from dacdr.training.trainer import Trainer

    run = RunDir(run_dir)
    cfg = run.read_config()
    model, desc = run.load_model()
    prepared = prepare(cfg.data)
    results = Trainer(prepared, model, desc["name"], cfg.train.model_copy(update={"progress": False}),
                      run_dir).evaluate()
    _print_results(results)


@app.command("models")
def list_models() -> None:
    """List the registered models: the paper's table rows in its order, then the others; with each its family."""
    from dacdr.models import get_entry, model_names, paper_order

    order = paper_order()
    for name in [*order, *(m for m in model_names() if m not in order)]:
        e = get_entry(name)
        extra = f" ({', '.join(f'{k}={v}' for k, v in e.fixed.items())})" if e.fixed else ""
        family = f" \\[{e.family}]" if e.family else ""
        console.print(f"{name}{family}: {e.cls.__module__}.{e.cls.__name__}{extra}", soft_wrap=True)


def _print_results(results: dict) -> None:
    from rich.table import Table

    from dacdr.reporting.summary import REFERENCE_KEYS

    for scope in ("cold", "all"):
        rows = results["test"][scope]
        if not rows:
            continue
        keys = [k for k in next(iter(rows.values())) if k != "n"]
        table = Table(title=f"{results['model']} — test, {'cold-start users' if scope == 'cold' else 'all users'}")
        table.add_column("domain")
        for k in keys:
            table.add_column(k)
        table.add_column("n")
        refs = {key: results[key].get(scope, {}) for key in REFERENCE_KEYS if key in results}
        for d, m in rows.items():
            table.add_row(d, *(f"{m[k]:.4f}" for k in keys), str(m.get("n", "")))
            for key, ref in refs.items():
                if d in ref:
                    table.add_row(f"  {key.replace('_', ' ')}", *(f"{ref[d].get(k, float('nan')):.4f}" for k in keys), "")
        console.print(table)
    console.print(json.dumps({"run": results.get("model"), "seed": results.get("seed")}))
