"""`dacdr demo`: the whole story on the built-in synthetic world, in one command.

Generates the `demo` preset, trains DACDR, its three ablations and DNN-multi over several seeds, and
writes `metrics.json`, `table.md` and plots (validation curves; one cold-start user's attention).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from dacdr.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dacdr.data.batches import BatchGatherer
from dacdr.data.features import FIRST_ID
from dacdr.data.prepare import prepare
from dacdr.data.samples import PreparedData
from dacdr.data.synthetic import generate, get_preset
from dacdr.reporting.plots import plot_attention, plot_validation_curves
from dacdr.reporting.summary import build_metrics, markdown_tables
from dacdr.runner import train_run
from dacdr.training.checkpoint import load_model

DEMO_MODELS = ["DACDR", "DACDR w/o DA", "DACDR w/o IA", "DACDR w/o DA&IA", "DNN-multi"]


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
    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = models or DEMO_MODELS
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
        attention_figure(prepared, out / "runs" / "DACDR-seed0", out / "attention.png")
    console.print(table)
    console.print(f"wrote {out}/metrics.json, table.md, validation_curves.png, attention.png "
                  f"in {metrics['wall_seconds']:.0f} s")
    return metrics


def _names(prepared: PreparedData, field: str, ids: np.ndarray) -> list[str]:
    values = prepared.vocabs[field].values
    return [values[i - FIRST_ID] if i >= FIRST_ID else "?" for i in ids]


def attention_figure(prepared: PreparedData, run_dir: Path, path: Path) -> Path | None:
    """Both attention steps of DACDR for one cold-start test impression with a full source history."""
    model, _ = load_model(run_dir)
    split, s = prepared.split, prepared.samples
    cold = split.test[split.test_cold]
    seq_len = s["seq_end"][cold] - s["seq_start"][cold]
    clicked = s["label"][cold] > 0
    order = np.lexsort((-seq_len, ~clicked))  # a click with the longest history first
    if len(order) == 0:
        return None
    sample = cold[order[:1]]
    batch = BatchGatherer(prepared).gather(sample)
    with torch.no_grad():
        parts = model.attend(batch["seq"], batch["seq_mask"], batch["item"], batch["domain"])
    mask = batch["seq_mask"][0].numpy()
    alpha = parts["alpha"][0].numpy()[mask]
    item_w = parts["A_i"][0].mean(dim=(0, 1)).numpy()[mask]
    fields = prepared.spec.sequence_fields
    seq = batch["seq"][0].numpy()[mask]
    cat_j = fields.index("category") if "category" in fields else 0
    cats = _names(prepared, fields[cat_j], seq[:, cat_j])
    behaviours = _names(prepared, "behaviour", seq[:, fields.index("behaviour")])
    cand_cat = _names(prepared, prepared.spec.item_fields[min(1, len(prepared.spec.item_fields) - 1)],
                      batch["item"][0, 1:2].numpy())[0]
    domain = _names(prepared, "domain", s["domain"][sample])[0]
    title = (f"user {_names(prepared, 'user', s['user'][sample])[0]} (cold-start in {domain}); "
             f"candidate category {cand_cat}, label {int(s['label'][sample][0])}")
    labels = [f"{c}·{b[:2]}" for c, b in zip(cats, behaviours, strict=True)]
    return plot_attention(labels, alpha, item_w, np.array(cats) == cand_cat, title, path)
