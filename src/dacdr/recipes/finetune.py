"""Fine-tuning recipe (`dacdr finetune`): a trained run plus a dataset with a new target domain -> a new run.

Loads the base run, prepares the new data with the base run's data settings, re-indexes it into the base
vocabularies (extended), grows the model, trains only what MODEL.md §3.5 allows (`dacdr.training.finetune`)
and writes an ordinary run directory with a `finetune.json` report.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from dacdr.config import RunConfig, TrainConfig
from dacdr.data.batches import BatchGatherer
from dacdr.data.prepare import prepare
from dacdr.data.samples import PreparedData
from dacdr.evaluation import per_domain_metrics, predict
from dacdr.fsutil import sha256_file
from dacdr.models import RecModel
from dacdr.package import run_prepared
from dacdr.training.finetune import (
    FinetuneTrainer,
    align_to_vocabularies,
    count_parameters,
    expand_model,
    restrict_split,
    trainable_rows,
)
from dacdr.training.rundir import RunDir

FINETUNE_REPORT = "finetune.json"


def finetune(
    base_run: str | Path,
    data_dir: str | Path,
    domain: str,
    out: str | Path,
    epochs: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Add `domain` (present in `data_dir`, absent from the base model) and fine-tune on its rows.

    Writes a run directory (`model.*`, `vocabs.json`, `config.yaml`, `results.json`, `finetune.json`) and
    returns the report: trainable / total parameters, wall time, and the new domain's test metrics before
    and after fine-tuning.
    """
    base, out, data_dir = RunDir(base_run), Path(out), Path(data_dir)
    base_cfg = base.read_config()
    base_model, desc = base.load_model()
    base_prepared, _ = run_prepared(base.path)
    if domain in base_prepared.vocabs["domain"].index:
        raise ValueError(f"domain {domain!r} is already known to the base model {base.path}")
    if not (data_dir / "dataset.json").is_file():
        raise FileNotFoundError(f"{data_dir}: no dataset.json; --data must be a dataset directory")
    data_cfg = base_cfg.data.model_copy(update={"path": str(data_dir), "synthetic": None})
    t_prep = time.perf_counter()
    fresh = prepare(data_cfg)
    if domain not in fresh.spec.target_domains:
        raise ValueError(f"domain {domain!r} is not a target domain of {data_dir} "
                         f"(targets: {fresh.spec.target_domains})")
    prepared = align_to_vocabularies(fresh, base_prepared.vocabs)
    prep_seconds = time.perf_counter() - t_prep

    train_cfg = base_cfg.train.model_copy(update={
        "weight_decay": 0.0, "progress": progress,
        **({"epochs": epochs} if epochs else {}), **({"lr": lr} if lr else {}),
        **({"seed": seed} if seed is not None else {}),
    })
    TrainConfig.model_validate(train_cfg.model_dump())
    model = expand_model(base_model, desc["name"], prepared.spec, seed=train_cfg.seed)
    masks = trainable_rows(model, base_model.spec.vocab_sizes, prepared, domain)
    trainable, total = count_parameters(model, masks)

    tuned = restrict_split(prepared, domain)
    before = _domain_metrics(model, tuned, domain, train_cfg.eval_batch_size)

    run = RunDir(out).create()
    # An interrupted fine-tuning resumes, but only from the same base weights: the run's config is the base
    # run's, so it cannot tell a retrained base model from the old one.
    base_digest = sha256_file(base / RunDir.WEIGHTS)
    marker = run / "finetune_base.sha256"
    if run.resume_dir.exists() and (not marker.is_file() or marker.read_text().strip() != base_digest):
        log(f"{out}: its resume state was fine-tuned from other base weights; starting over")
        shutil.rmtree(run.resume_dir)
    marker.write_text(base_digest + "\n")
    prepared.vocabs.save(run / RunDir.VOCABS)
    run.write_config(RunConfig(data=data_cfg, model=base_cfg.model, train=train_cfg, out=str(out)))
    trainer = FinetuneTrainer(tuned, model, desc["name"], train_cfg, out, masks=masks)
    t0 = time.perf_counter()
    history = trainer.fit()
    train_seconds = time.perf_counter() - t0
    results = trainer.evaluate()
    report = {
        "base_run": str(base.path), "data": str(data_dir), "domain": domain, "model": desc["name"],
        "trainable_parameters": trainable, "total_parameters": total,
        "trainable_share": trainable / total,
        "train_seconds": round(train_seconds, 2), "prepare_seconds": round(prep_seconds, 2),
        "epochs_run": len(history), "train_samples": len(tuned.split.train_target),
        "before": before, "after": {scope: results["test"][scope].get(domain) for scope in ("cold", "all")},
        "trainable_tensors": {n: (None if m is None else int(m.sum())) for n, m in masks.items()},
        "base_vocab_sizes": base_model.spec.vocab_sizes,
    }
    (out / FINETUNE_REPORT).write_text(json.dumps(report, indent=1))
    log(f"fine-tuned {desc['name']} to {domain}: {trainable:,} of {total:,} parameters trained "
        f"({100 * trainable / total:.2f}%), {train_seconds:.1f} s")
    return report


def _domain_metrics(model: RecModel, prepared: PreparedData, domain: str, batch_size: int) -> dict[str, Any]:
    """Test metrics of `domain` (cold-start and all users) for `model` as it is."""
    split = prepared.split
    preds = predict(model, BatchGatherer(prepared), split.test, batch_size)
    return {
        "cold": per_domain_metrics(prepared, split.test[split.test_cold], preds[split.test_cold]).get(domain),
        "all": per_domain_metrics(prepared, split.test, preds).get(domain),
    }
