"""`dacdr demo`: the whole story on the built-in synthetic world, in one command.

Generates the `demo` preset, trains DACDR, its three ablations and DNN-multi over several seeds, and
writes `metrics.json`, `table.md` and plots (validation curves; one cold-start user's attention).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from dacdr.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dacdr.data.prepare import prepare
from dacdr.data.synthetic import generate, get_preset
from dacdr.models import dacdr_variants
from dacdr.recipes.train import train_run
from dacdr.reporting.attention import attention_figure
from dacdr.reporting.plots import plot_validation_curves
from dacdr.reporting.summary import build_metrics, markdown_tables
from dacdr.training.checkpoint import load_model


def demo_models() -> list[str]:
    """DACDR, its ablations (the registry's `ablation` tag) and the DNN-multi baseline."""
    return [*dacdr_variants(), "DNN-multi"]


def demo_settings(quick: bool, preset: str = "demo") -> tuple[Any, TrainConfig]:
    """The data preset and training settings of the full and the quick demo."""
    if quick:
        synth = get_preset(preset, n_users=8000) if preset == "demo" else get_preset(preset)
        return synth, TrainConfig(epochs=2, patience=1, batch_size=1024, lr=3e-3)
    return get_preset(preset), TrainConfig(epochs=2, patience=1, batch_size=1024, lr=3e-3)


# Models trained on source samples (DACDR, DNN-multi) see a fifth of them per epoch: the source domain has ~4.5x
# the target rows, and the demo must fit in 10 minutes on 2 cores.
DEMO_SOURCE_SAMPLE_RATE = 0.2


def run_demo(
    out: str | Path = "demo-out",
    seeds: int = 3,
    quick: bool = False,
    models: list[str] | None = None,
    console: Console | None = None,
    progress: bool = True,
    preset: str = "demo",
) -> dict[str, Any]:
    """Generate the `preset` world (once), train `models` (default: `demo_models()`) for each seed on the same
    samples, and write metrics.json, table.md, the validation curves and DACDR's attention for one user."""
    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = models or demo_models()
    synth, train_cfg = demo_settings(quick, preset)
    seed_list = list(range(1 if quick else seeds))
    t0 = time.perf_counter()

    data_dir = out / "data"
    if (data_dir / "dataset.json").exists():
        made_with = json.loads((data_dir / "dataset.json").read_text()).get("generator", {}).get("config")
        if made_with != synth.model_dump(mode="json"):
            raise ValueError(f"{data_dir} holds a different synthetic world (another preset or --quick); "
                             "use another --out or delete it")
    else:
        console.print(f"generating the synthetic world into {data_dir} ...")
        generate(synth, data_dir, seed=0)
    data_cfg = DataConfig(path=str(data_dir), source_sample_rate=DEMO_SOURCE_SAMPLE_RATE)
    prepared = prepare(data_cfg)
    split = prepared.split
    console.print(
        f"samples: {len(split.train_target):,} target train, {len(split.train_source):,} source train, "
        f"{len(split.valid):,} valid, {len(split.test):,} test ({int(split.test_cold.sum()):,} cold-start)"
    )

    results: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    for seed in seed_list:
        for name in models:
            cfg = RunConfig(
                data=data_cfg,
                model=ModelConfig(name=name),
                train=train_cfg.model_copy(update={"seed": seed, "progress": progress}),
            )
            run_dir = out / "runs" / f"{name.replace(' ', '_').replace('/', '')}-seed{seed}"
            r = train_run(cfg, prepared=prepared, run_dir=run_dir, console=console)
            results[name].append(r)
            auc = {d: round(v["auc"], 4) for d, v in r["test"]["cold"].items()}
            console.print(f"[bold]{name}[/bold] seed {seed}: cold-start AUC {auc}")

    metrics = build_metrics(
        prepared.spec.task,
        {"name": prepared.meta["dataset"], "path": str(data_dir), "preset": preset,
         "quick": quick, "generator_seed": 0},
        seed_list,
        results,
    )
    metrics["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    table = markdown_tables(metrics)
    (out / "table.md").write_text(
        "## Cold-start users (mean ± std over seeds " + ", ".join(map(str, seed_list)) + ")\n\n" + table
        + "\n## All test users\n\n" + markdown_tables(metrics, scope="models_all_users")
    )
    plot_validation_curves({m: [r["history"] for r in rs] for m, rs in results.items()},
                           "auc", out / "validation_curves.png")
    if "DACDR" in results:
        attention_figure(load_model(out / "runs" / "DACDR-seed0")[0], prepared, out / "attention.png")
    console.print(table)
    console.print(f"wrote {out}/metrics.json, table.md, validation_curves.png, attention.png "
                  f"in {metrics['wall_seconds']:.0f} s")
    return metrics
