"""Programmatic entry points: from a validated config to a trained, evaluated run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from dacdr.config import DataConfig, RunConfig, check_model_params
from dacdr.data.samples import PreparedData, prepare_cached
from dacdr.fsutil import recover_dir
from dacdr.models import create_model
from dacdr.training.trainer import Trainer


def dataset_path(data: DataConfig, root: str | Path = "data") -> Path:
    """The dataset directory of a config, generating the synthetic preset on first use."""
    if data.path is not None:
        return Path(data.path)
    from dacdr.data.synthetic import generate

    out = Path(root) / f"synthetic-{data.synthetic}-seed{data.synthetic_seed}"
    if not (out / "dataset.json").exists():
        generate(data.synthetic, out, seed=data.synthetic_seed)
    return out


def prepare_data(data: DataConfig, split_seed: int = 0, data_root: str | Path = "data") -> PreparedData:
    if data.streaming:  # out of core: a StreamingData, which the Trainer streams (docs/scaling.md)
        from dacdr.data.streaming import prepare_streaming

        if data.sequence_cutoff != "before":
            raise ValueError("data.sequence_cutoff: the streaming pipeline builds leak-free sequences only "
                             "('before'); use data.streaming: false for 'all'")

        return prepare_streaming(  # type: ignore[return-value]
            dataset_path(data, data_root), data.cache_dir, max_len=data.max_len, protocol=data.protocol,
            valid_share=data.valid_share, cold_start_share=data.cold_start_share,
            source_sample_rate=data.source_sample_rate, seed=split_seed, shard_rows=data.shard_rows,
            sort_buckets=data.sort_buckets, **data.embedding_limits(),
        )
    return prepare_cached(
        dataset_path(data, data_root),
        cache_dir=data.cache_dir,
        max_len=data.max_len,
        protocol=data.protocol,
        valid_share=data.valid_share,
        cold_start_share=data.cold_start_share,
        source_sample_rate=data.source_sample_rate,
        seed=split_seed,
        sequence_cutoff=data.sequence_cutoff,
        **data.embedding_limits(),
    )


def _same_config(path: Path, cfg: RunConfig) -> bool:
    """Whether `path` (a run's config.yaml) describes `cfg`; fields added since it was written count as their
    defaults, so a newer dacdr still resumes an older run."""
    try:
        return RunConfig.model_validate(yaml.safe_load(path.read_text())) == cfg
    except (ValueError, yaml.YAMLError):
        return False


def train_run(
    cfg: RunConfig,
    prepared: PreparedData | None = None,
    run_dir: str | Path | None = None,
    console: Console | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data`, keep the best checkpoint, evaluate it on the test split."""
    check_model_params(cfg, "config")  # fail on an unknown model or a bad parameter before any data work
    prepared = prepared or prepare_data(cfg.data)
    run_dir = Path(run_dir or cfg.out or f"runs/{cfg.model.name.replace(' ', '_')}-seed{cfg.train.seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_text = yaml.safe_dump(cfg.model_dump(), sort_keys=False)
    previous = run_dir / "config.yaml"
    recover_dir(run_dir / "resume")  # a checkpoint swap cut short: its previous checkpoint counts below
    if resume and (run_dir / "resume").exists() and previous.exists() and not _same_config(previous, cfg):
        # Resuming under another config would silently mix two runs' weights and history.
        raise ValueError(f"{run_dir} holds a run with a different config.yaml; resume needs the same config "
                         "(use --no-resume to start over there, or another --out)")
    previous.write_text(config_text)
    import torch

    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model.name, prepared.spec, **cfg.model.params)
    trainer = Trainer(prepared, model, cfg.model.name, cfg.train, run_dir, console)
    history = trainer.fit(resume=resume)
    results = trainer.evaluate()
    results["history"] = history
    return results
