"""`dacdr bench`: the paper's Table 2 on the synthetic industrial world, in one command.

Generates the `industrial` preset (one source, three targets with Table 1's overlaps and CTRs, scaled down),
trains every baseline of the registry and the four DACDR variants on the same prepared samples for each
seed, and writes, in the output directory:

- `metrics.json`: the `dacdr demo` schema (`reporting.summary.build_metrics`) plus the bench settings, the
  per-seed cold-start AUCs, the paired tests and the wall time of every run;
- `results.csv`: one row per (model, target, scope) with AUC / gAUC / LogLoss mean and std over seeds;
- `table.md`: the paper's Table 2 layout (rows: the references — oracle, transferable oracle, histogram
  plug-in — then the models in the paper's order; columns:
  targets; cells: cold-start AUC mean ± std), the paired tests, then the detailed tables;
- `table2.png`: a bar chart of the same numbers.

Budget rule, the same for every model: each training phase runs at most `epochs` epochs of at most
`max_steps_per_epoch` mini-batches of `batch_size` samples, with early stopping on validation AUC where the
phase is validated; every model has embeddings of size `dim` and otherwise its own default sizes.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from dacdr.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dacdr.data.prepare import prepare
from dacdr.data.samples import PreparedData
from dacdr.data.synthetic import SyntheticConfig, generate, get_preset
from dacdr.models import get_entry
from dacdr.reporting.summary import REFERENCE_KEYS, REFERENCE_LABELS, build_metrics, markdown_tables
from dacdr.runner import train_run

# The rows of the paper's Table 2, in its order, after the popularity floor (not in the paper).
BASELINES = ["Pop", "DNN-single", "CMF", "SSCDR", "EMCDR", "PTUPCDR", "TMCDR", "DNN-multi", "Shared-Bottom", "MMoE", "PLE",
             "STAR"]
DACDR_VARIANTS = ["DACDR", "DACDR w/o DA", "DACDR w/o IA", "DACDR w/o DA&IA"]
# The paper-literal model (MODEL.md verbatim) beside the default, which departs from it (docs/models.md).
PAPER_ORDER = [*BASELINES, "DACDR (paper)", *DACDR_VARIANTS]
# Smaller worlds of the quick run, per preset.
QUICK_OVERRIDES: dict[str, dict[str, Any]] = {"industrial": {"n_users": 12_000}, "mechanism": {"n_users": 6_000}}


class BenchSettings(BaseModel):
    """Everything that decides a benchmark's numbers besides the code (recorded in metrics.json)."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "industrial"
    preset_overrides: dict[str, Any] = Field(default_factory=dict)
    generator_seed: int = 0
    seeds: int = Field(3, ge=1)
    dim: int = Field(16, gt=0, description="embedding size of every model")
    max_len: int = Field(50, gt=0)
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
    params: dict[str, Any] = {"dim": dim}
    if "user" in get_entry(name).cls.inputs:
        params["n_users"] = len(prepared.vocabs["user"])
    return params


def paired_test(a: list[float], b: list[float]) -> dict[str, float]:
    """Paired t-test of `a` against `b` across seeds (scipy.stats.ttest_rel); NaN p-value under 2 seeds."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    out = {"mean_diff": float(diff.mean()), "std_diff": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0,
           "t": float("nan"), "p_value": float("nan"), "n_seeds": len(diff)}
    if len(diff) > 1 and np.ptp(diff) > 0:
        from scipy.stats import ttest_rel

        res = ttest_rel(a, b)
        out |= {"t": float(res.statistic), "p_value": float(res.pvalue)}
    return out


def paired_tests(per_seed_auc: dict[str, dict[str, list[float]]], targets: list[str]) -> dict[str, Any]:
    """Per target: DACDR against the baseline with the best mean cold-start AUC."""
    tests: dict[str, Any] = {}
    baselines = [m for m in BASELINES if m in per_seed_auc]
    if "DACDR" not in per_seed_auc or not baselines:
        return tests
    for d in targets:
        best = max(baselines, key=lambda m: float(np.mean(per_seed_auc[m][d])))
        tests[d] = {"dacdr": "DACDR", "best_baseline": best,
                    **paired_test(per_seed_auc["DACDR"][d], per_seed_auc[best][d])}
    return tests


def ablation_tests(per_seed_auc: dict[str, dict[str, list[float]]], targets: list[str]) -> dict[str, Any]:
    """DACDR against each of its ablations, per target and on the mean of the targets (paired across seeds)."""
    if "DACDR" not in per_seed_auc:
        return {}
    tests: dict[str, Any] = {}
    mean = {m: list(np.mean([per_seed_auc[m][d] for d in targets], axis=0)) for m in per_seed_auc}
    for ablation in [m for m in DACDR_VARIANTS[1:] if m in per_seed_auc]:
        per = {d: paired_test(per_seed_auc["DACDR"][d], per_seed_auc[ablation][d]) for d in targets}
        tests[ablation] = {"targets": per, "mean_of_targets": paired_test(mean["DACDR"], mean[ablation])}
    return tests


def ablation_markdown(tests: dict[str, Any]) -> str:
    if not tests:
        return "No ablation test (DACDR or its ablations are missing).\n"
    targets = list(next(iter(tests.values()))["targets"])
    lines = ["| DACDR − | " + " | ".join(targets) + " | mean of targets | p-value (mean) |",
             "|---|" + "---|" * (len(targets) + 2)]
    for name, t in tests.items():
        cells = [f"{t['targets'][d]['mean_diff']:+.4f} ± {t['targets'][d]['std_diff']:.4f}" for d in targets]
        m = t["mean_of_targets"]
        p = "n/a" if math.isnan(m["p_value"]) else f"{m['p_value']:.3g}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['mean_diff']:+.4f} ± {m['std_diff']:.4f} | {p} |")
    return "\n".join(lines) + "\n"


def _fmt(stat: dict[str, float]) -> str:
    return "n/a" if math.isnan(stat["mean"]) else f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def table2_markdown(metrics: dict[str, Any]) -> str:
    """Rows: the reference scores, then models in the paper's order; columns: targets; cells: cold-start AUC
    mean ± std."""
    models = metrics["models"]
    targets = list(next(iter(models.values())))
    lines = ["| model | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for key in REFERENCE_KEYS:
        if key in metrics:
            lines.append(f"| {REFERENCE_LABELS[key]} | " + " | ".join(f"{metrics[key][d]['auc']:.4f}" for d in targets)
                         + " |")
    for name in [m for m in PAPER_ORDER if m in models] + [m for m in models if m not in PAPER_ORDER]:
        lines.append(f"| {name} | " + " | ".join(_fmt(models[name][d]["auc"]) for d in targets) + " |")
    return "\n".join(lines) + "\n"


def tests_markdown(tests: dict[str, Any]) -> str:
    if not tests:
        return "No paired test (DACDR or the baselines are missing).\n"
    lines = ["| target | best baseline | DACDR − baseline AUC (mean ± std over seeds) | t | p-value | seeds |",
             "|---|---|---|---|---|---|"]
    for d, t in tests.items():
        p = "n/a" if math.isnan(t["p_value"]) else f"{t['p_value']:.3g}"
        tt = "n/a" if math.isnan(t["t"]) else f"{t['t']:.2f}"
        lines.append(f"| {d} | {t['best_baseline']} | {t['mean_diff']:+.4f} ± {t['std_diff']:.4f} | {tt} | {p} "
                     f"| {t['n_seeds']} |")
    return "\n".join(lines) + "\n"


def write_csv(metrics: dict[str, Any], path: Path) -> Path:
    keys = ["auc", "gauc", "logloss"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "target", "users", *(f"{k}_{s}" for k in keys for s in ("mean", "std")), "seeds"])
        n = len(metrics["seeds"])
        for scope, suffix, users in (("models", "", "cold"), ("models_all_users", "_all_users", "all")):
            for key in REFERENCE_KEYS:
                for d, m in metrics.get(key + suffix, {}).items():
                    w.writerow([REFERENCE_LABELS[key], d, users, *(v for k in keys for v in (m[k], 0.0)), 1])
            for name, per_domain in metrics[scope].items():
                for d, m in per_domain.items():
                    w.writerow([name, d, users, *(m[k][s] for k in keys for s in ("mean", "std")), n])
    return path


def plot_table2(metrics: dict[str, Any], path: Path) -> Path:
    """Grouped bars: one group per target, one bar per model (paper order), error bars = std over seeds."""
    from dacdr.reporting.plots import plt

    models = [m for m in PAPER_ORDER if m in metrics["models"]] + \
        [m for m in metrics["models"] if m not in PAPER_ORDER]
    targets = list(metrics["models"][models[0]])
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(models)), 4.8))
    cmap = plt.get_cmap("tab20")
    lows = []
    for j, name in enumerate(models):
        means = [metrics["models"][name][d]["auc"]["mean"] for d in targets]
        stds = [metrics["models"][name][d]["auc"]["std"] for d in targets]
        lows += means
        x = np.arange(len(targets)) - 0.4 + width * (j + 0.5)
        ax.bar(x, means, width, yerr=stds, label=name, color=cmap(j % 20), capsize=2)
    for i, d in enumerate(targets):
        if "oracle" in metrics:
            ax.hlines(metrics["oracle"][d]["auc"], i - 0.42, i + 0.42, colors="black", linestyles="--",
                      label="oracle (true p)" if i == 0 else None)
        if "oracle_transferable" in metrics:
            ax.hlines(metrics["oracle_transferable"][d]["auc"], i - 0.42, i + 0.42, colors="grey", linestyles=":",
                      label="transferable oracle" if i == 0 else None)
    finite = [v for v in lows if not math.isnan(v)]
    if finite:
        top = max(finite + [metrics["oracle"][d]["auc"] for d in targets] if "oracle" in metrics else finite)
        ax.set_ylim(max(0.0, min(finite) - 0.02), top + 0.01)
    ax.set_xticks(np.arange(len(targets)), targets)
    ax.set_ylabel("cold-start AUC (mean ± std over seeds)")
    ax.set_title(f"Table 2 on the synthetic {metrics['dataset'].get('preset', '')} world, "
                 f"{len(metrics['seeds'])} seed(s)")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_bench(
    out: str | Path = "bench-out",
    settings: BenchSettings | None = None,
    models: list[str] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train `models` (default: every Table 2 row) for each seed on one generated world; write the reports."""
    console = console or Console()
    settings = settings or bench_settings()
    models = models or PAPER_ORDER
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
    tests = paired_tests(per_seed, targets)
    ablations = ablation_tests(per_seed, targets)
    metrics |= {"bench": settings.model_dump(), "per_seed_cold_auc": per_seed, "paired_tests": tests,
                "ablation_tests": ablations,
                "run_seconds": wall, "wall_seconds": round(time.perf_counter() - t0, 1)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    write_csv(metrics, out / "results.csv")
    plot_table2(metrics, out / "table2.png")
    seeds_txt = ", ".join(map(str, seed_list))
    table = table2_markdown(metrics)
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
