"""`dacdr bench`: the paper's Table 2 on the synthetic industrial world, in one command.

Generates the `industrial` preset (one source, three targets with Table 1's overlaps and CTRs, scaled down),
trains every model of the paper's table (each registered model with an `order`: the baselines, DACDR, its
paper-literal form and its ablations) on the same prepared samples for each seed, and writes, in the output
directory:

- `metrics.json`: the `dacdr demo` schema (`reporting.summary.build_metrics`) plus the bench settings, the
  per-seed cold-start AUCs, the paired tests and the wall time of every run;
- `results.csv`: one row per (model, target, scope) with AUC / gAUC / LogLoss mean and std over seeds;
- `table.md`: the paper's Table 2 layout (rows: the references — oracle, transferable oracle, histogram
  plug-in — then the models in the paper's order, `dacdr.models.paper_order()`; columns:
  targets; cells: cold-start AUC mean ± std), the paired tests, then the detailed tables;
- `table2.png`: a bar chart of the same numbers.

Budget rule, the same for every model: each training phase runs at most `epochs` epochs of at most
`max_steps_per_epoch` mini-batches of `batch_size` samples, with early stopping on validation AUC where the
phase is validated; every model has embeddings of size `dim` and otherwise its own default sizes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import Field
from rich.console import Console

from dacdr.config import DataConfig, MaxLen, ModelConfig, RunConfig, StrictModel, TrainConfig
from dacdr.data.prepare import prepare
from dacdr.data.samples import PreparedData
from dacdr.data.synthetic import SyntheticConfig, generate, get_preset
from dacdr.models import baselines, dacdr_variants, data_params, get_entry, paper_order
from dacdr.recipes.train import train_run
from dacdr.reporting.plots import plot_table2
from dacdr.reporting.significance import ablation_tests, paired_tests
from dacdr.reporting.summary import build_metrics, markdown_tables
from dacdr.reporting.tables import ablation_markdown, table2_csv, table2_markdown, tests_markdown

# Smaller worlds of the quick run, per preset.
QUICK_OVERRIDES: dict[str, dict[str, Any]] = {"industrial": {"n_users": 12_000}, "mechanism": {"n_users": 6_000}}


class BenchSettings(StrictModel):
    """Everything that decides a benchmark's numbers besides the code (recorded in metrics.json)."""

    preset: str = "industrial"
    preset_overrides: dict[str, Any] = Field(default_factory=dict)
    generator_seed: int = 0
    seeds: int = Field(3, ge=1)
    dim: int = Field(16, gt=0, description="embedding size of every model")
    max_len: MaxLen = 50
    source_sample_rate: float = Field(
        1.0, gt=0, le=1, description="share of the source rows drawn (once) as training samples")
    jobs: int = Field(1, ge=1, description="runs trained at once, each in its own process with one torch thread")
    train: TrainConfig


def bench_settings(preset: str = "industrial", seeds: int = 3, quick: bool = False, jobs: int = 2) -> BenchSettings:
    """The full run (sized for <= 60 min on 2 CPU cores) or the quick one (<= 5 min, 1 seed, smaller world).

    Full budget: every phase 2 epochs over its own training rows (batches of 2,048, early stopping with
    patience 1 where the phase is validated); a quarter of the source rows, drawn once, is what the models
    that learn from source rows see.
    """
    if quick:
        return BenchSettings(
            preset=preset, preset_overrides=QUICK_OVERRIDES.get(preset, {}), seeds=1,
            source_sample_rate=0.25, jobs=jobs,
            train=TrainConfig(epochs=1, max_steps_per_epoch=25, batch_size=1024, lr=3e-3, patience=0,
                              progress=False),
        )
    return BenchSettings(
        preset=preset, seeds=seeds, source_sample_rate=0.25, jobs=jobs,
        train=TrainConfig(epochs=2, batch_size=2048, lr=3e-3, patience=1, progress=False),
    )


def model_params(name: str, prepared: PreparedData, dim: int) -> dict[str, Any]:
    """Constructor arguments of `name` on `prepared`: the shared embedding size, and the user vocabulary size
    for the models that embed user ids."""
    return {"dim": dim, **data_params(name, len(prepared.vocabs["user"]))}


def run_bench(
    out: str | Path = "bench-out",
    settings: BenchSettings | None = None,
    models: list[str] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train `models` (default: every Table 2 row, `paper_order()`) for each seed on one generated world; write
    the reports."""
    console = console or Console()
    settings = settings or bench_settings()
    models = models or paper_order()
    for name in models:
        get_entry(name)  # an unknown name fails before any data work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    synth: SyntheticConfig = get_preset(settings.preset, **settings.preset_overrides)
    data_dir = out / "data"
    if not (data_dir / "dataset.json").exists():
        console.print(f"generating the synthetic {settings.preset} world into {data_dir} ...")
        generate(synth, data_dir, seed=settings.generator_seed)
    data_cfg = DataConfig(path=str(data_dir), max_len=settings.max_len,
                          source_sample_rate=settings.source_sample_rate)
    prepared = prepare(data_cfg)
    if prepared.spec.task != "ctr":
        raise ValueError(f"dacdr bench reproduces the click Table 2; preset {settings.preset!r} is not a click log")
    split = prepared.split
    console.print(
        f"samples: {len(split.train_target):,} target train, {len(split.train_source):,} source train, "
        f"{len(split.valid):,} valid, {len(split.test):,} test ({int(split.test_cold.sum()):,} cold-start)"
    )

    seed_list = list(range(settings.seeds))
    jobs = []
    for seed in seed_list:
        for name in models:
            cfg = RunConfig(
                data=data_cfg,
                model=ModelConfig(name=name, params=model_params(name, prepared, settings.dim)),
                train=settings.train.model_copy(update={"seed": seed}),
            )
            jobs.append((name, seed, cfg, out / "runs" / f"{name.replace(' ', '_').replace('/', '')}-seed{seed}"))
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    wall: dict[str, list[float]] = {m: [] for m in models}
    for (name, _, _, _), (r, seconds) in zip(jobs, _run_jobs(jobs, settings.jobs, prepared, console), strict=True):
        results[name].append(r)
        wall[name].append(seconds)

    metrics = build_metrics(
        prepared.spec.task,
        {"name": prepared.meta["dataset"], "path": str(data_dir), "preset": settings.preset,
         "preset_overrides": settings.preset_overrides, "generator_seed": settings.generator_seed},
        seed_list,
        results,
    )
    targets = prepared.spec.target_domains
    per_seed = {m: {d: [r["test"]["cold"][d]["auc"] for r in rs] for d in targets} for m, rs in results.items()}
    tests = paired_tests(per_seed, targets, baselines())
    ablations = ablation_tests(per_seed, targets, dacdr_variants()[1:])
    metrics |= {"bench": settings.model_dump(), "per_seed_cold_auc": per_seed, "paired_tests": tests,
                "ablation_tests": ablations,
                "run_seconds": wall, "wall_seconds": round(time.perf_counter() - t0, 1)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    table2_csv(metrics, out / "results.csv")
    plot_table2(metrics, out / "table2.png", paper_order())
    seeds_txt = ", ".join(map(str, seed_list))
    table = table2_markdown(metrics, paper_order())
    (out / "table.md").write_text(
        f"## Table 2: cold-start AUC (mean ± std over seeds {seeds_txt})\n\n{table}\n"
        f"## DACDR vs the best baseline of each target (paired t-test across seeds)\n\n{tests_markdown(tests)}\n"
        f"## DACDR vs its ablations (cold-start AUC difference, paired across seeds)\n\n{ablation_markdown(ablations)}\n"
        "## Cold-start users, all metrics\n\n" + markdown_tables(metrics)
        + "\n## All test users\n\n" + markdown_tables(metrics, scope="models_all_users")
    )
    console.print(table)
    console.print(tests_markdown(tests))
    console.print(ablation_markdown(ablations))
    console.print(f"wrote {out}/metrics.json, results.csv, table.md, table2.png in {metrics['wall_seconds']:.0f} s")
    return metrics


def _train_one(cfg: RunConfig, run_dir: Path, prepared: PreparedData | None = None) -> tuple[dict[str, Any], float]:
    """One (model, seed) run; in a worker process the prepared samples come from the on-disk cache."""
    if prepared is None:
        prepared = prepare(cfg.data)
    t0 = time.perf_counter()
    r = train_run(cfg, prepared=prepared, run_dir=run_dir, console=Console(quiet=True))
    return r, round(time.perf_counter() - t0, 1)


def _run_jobs(jobs: list[tuple[str, int, RunConfig, Path]], n_procs: int, prepared: PreparedData,
              console: Console) -> list[tuple[dict[str, Any], float]]:
    """Every (model, seed) run, in order; with `n_procs` > 1, that many worker processes of one torch thread
    each (independent runs scale better across processes than across the threads of one small model)."""

    def report(name: str, seed: int, r: dict[str, Any], seconds: float) -> None:
        auc = {d: round(v["auc"], 4) for d, v in r["test"]["cold"].items()}
        console.print(f"[bold]{name}[/bold] seed {seed}: cold-start AUC {auc} ({seconds:.0f} s)")

    if n_procs <= 1:
        done = []
        for name, seed, cfg, run_dir in jobs:
            done.append(_train_one(cfg, run_dir, prepared))
            report(name, seed, *done[-1])
        return done
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # Longest first (the models that also train on source rows), so that the workers finish together.
    order = sorted(range(len(jobs)), key=lambda i: get_entry(jobs[i][0]).cls.train_on != "source+targets")
    # spawn, not fork: a forked child inherits torch's thread pools in an undefined state.
    with ProcessPoolExecutor(n_procs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_train_one, jobs[i][2].model_copy(update={"train": jobs[i][2].train.model_copy(
            update={"num_threads": 1})}), jobs[i][3]): i for i in order}
        out: list[Any] = [None] * len(jobs)
        for fut in as_completed(futures):
            i = futures[fut]
            out[i] = fut.result()
            report(jobs[i][0], jobs[i][1], *out[i])
    return out
