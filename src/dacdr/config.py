"""Validated run configuration: what to train, on which data, how.

Configs are YAML files validated by pydantic before anything heavy starts; a bad value fails at once with
the path of the field (``train.batch_size: Input should be greater than 0``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class StrictModel(BaseModel):
    """The base of every config schema in dacdr: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


MaxLen = Annotated[int, Field(gt=0, le=1024, description="most recent source behaviours kept per sample (L)")]
"""The sequence length L, as every schema that sets it declares it (data, experiment split, bench)."""


class DataConfig(StrictModel):
    """Where the data comes from and how samples are built."""

    path: str | None = Field(None, description="dataset directory in the dacdr layout (docs/data-format.md)")
    synthetic: str | None = Field(None, description="synthetic preset to generate when `path` is not given")
    synthetic_seed: int = Field(0, description="seed of the synthetic world (independent of the model seed)")
    max_len: MaxLen = 50
    protocol: Literal["time", "users", "periods"] = Field(
        "time",
        description="'time': P1, the test period is the last day; 'users': P2, a share of users held out; "
        "'periods': a published split written as clock periods (CDRIB, P3)",
    )
    sequence_cutoff: Literal["before", "all"] = Field(
        "before",
        description="'before': leak-free, a sample's source sequence holds only behaviours before it; "
        "'all': the user's whole source history (PTUPCDR-compatible)",
    )
    cold_start_share: float = Field(
        0.2, gt=0, lt=1, description="P2 only: share of overlapping users held out as cold-start test users"
    )
    valid_share: float = Field(
        0.1, gt=0, lt=1, description="share of training users per target whose rows form the validation split"
    )
    source_sample_rate: float = Field(
        1.0, ge=0, le=1, description="share of source-domain rows used as training samples (when a model uses them)"
    )
    split_seed: int = Field(
        0, description="seed of the split (P2's cold-start users, validation users, source sub-sampling); "
        "independent of the model seed"
    )
    cache_dir: str | None = Field(None, description="sample cache; default <dataset>/.cache")
    min_count: dict[str, int] = Field(
        default_factory=dict,
        description="per embedded field (e.g. item): values seen fewer times before test_start share the OOV row",
    )
    hash_buckets: dict[str, int] = Field(
        default_factory=dict,
        description="per embedded field: hash values into this many rows (+ PAD and OOV) instead of one row each",
    )
    streaming: bool = Field(
        False,
        description="out-of-core: prepare into on-disk sample shards and a memory-mapped event table, and "
        "stream the shards in training (docs/scaling.md); default: everything in memory",
    )
    shard_rows: int = Field(65_536, gt=0, description="streaming: samples per shard row group (the unit of sharding)")
    sort_buckets: int | None = Field(
        None, gt=0, description="streaming: user buckets of the external sort; default: about 2M rows per bucket"
    )

    def embedding_limits(self) -> dict[str, dict[str, int]]:
        """The `min_count` / `hash_buckets` options that are set (unset ones keep old cache keys)."""
        return {k: v for k, v in (("min_count", self.min_count), ("hash_buckets", self.hash_buckets)) if v}

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.path is None and self.synthetic is None:
            raise ValueError("set either data.path or data.synthetic")
        return self


class ModelConfig(StrictModel):
    """Which registered model, and its hyper-parameters (passed to the model's constructor)."""

    name: str = Field("DACDR", description="a name from `dacdr models`")
    params: dict[str, Any] = Field(default_factory=dict, description="constructor keyword arguments")


class TrainConfig(StrictModel):
    """Optimisation and early stopping."""

    epochs: int = Field(10, gt=0, description="maximum epochs")
    batch_size: int = Field(1024, gt=0)
    eval_batch_size: int = Field(8192, gt=0)
    lr: float = Field(2e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    patience: int = Field(2, ge=0, description="epochs without validation improvement before stopping")
    seed: int = 0
    num_threads: int | None = Field(
        None, gt=0, description="torch intra-op threads; default: the process's setting (the `dacdr` commands "
        "set it to --threads, else OMP_NUM_THREADS, else their share of the cores minus the threads other "
        "processes run now, and print it)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="single-process training device; 'auto': CUDA when available (a distributed run "
        "places each rank itself)"
    )
    train_on: Literal["targets", "source+targets"] | None = Field(
        None, description="which domains' samples to train on; default: the model's own choice"
    )
    max_steps_per_epoch: int | None = Field(None, gt=0, description="cap on steps per epoch (quick runs)")
    checkpoint_every: int = Field(
        1, gt=0, description="write resume/ and history.json every N epochs of a phase and after its last one (an "
        "interrupted run then replays up to N-1 epochs, exactly); each write syncs to disk, which is a large "
        "share of an epoch that takes a fraction of a second"
    )
    progress: bool = Field(True, description="show a Rich progress bar")
    num_workers: int = Field(0, ge=0, description="streaming: data-loader worker processes per rank")
    find_unused_parameters: bool = Field(
        False, description="DDP: allow parameters without a gradient in a step (slower; only if a model needs it)"
    )
    embeddings: Literal["plain", "torchrec"] = Field(
        "plain", description="'plain': nn.Embedding tables, replicated on every rank (DDP); 'torchrec': one "
        "TorchRec EmbeddingCollection sharded across ranks by DistributedModelParallel (the `torchrec` extra, "
        "docs/scaling.md)"
    )
    sharding: dict[str, Literal["table_wise", "row_wise", "column_wise"]] = Field(
        default_factory=dict,
        description="torchrec: sharding type per field's table (e.g. {item: table_wise}); default: the item "
        "table row_wise, the others table_wise",
    )
    embedding_optimizer: Literal["adagrad", "rowwise_adagrad", "sgd", "adam"] = Field(
        "adagrad", description="torchrec: FBGEMM's optimizer fused into the sharded tables' backward ('adam' "
        "needs CUDA); the dense part keeps AdamW"
    )
    embedding_lr: float | None = Field(None, gt=0, description="torchrec: learning rate of the sharded tables; "
                                       "default: 10 x train.lr (Adagrad's steps shrink as it accumulates)")


class RunConfig(StrictModel):
    """A whole training run, as written in `configs/*.yaml`."""

    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    out: str | None = Field(None, description="run directory; default runs/<model>-<seed>")


class ConfigError(ValueError):
    """A config that does not validate; the message lists each bad field by its path."""


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The top-level mapping of a YAML file; a missing file, bad YAML or another top level is a `ConfigError`
    naming the file (`what` says what it should have been)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (FileNotFoundError, IsADirectoryError) as e:
        raise ConfigError(f"{path}: no such {what}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML run config; `overrides` are dotted keys (``train.epochs``) set on top."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for i, key in enumerate(parents):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                where = ".".join(parents[: i + 1])
                raise ConfigError(f"--set {dotted}: {where} is a value ({node!r}), not a section with fields")
        node[leaf] = value
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from e
    check_model_params(cfg, str(path))
    return cfg


def check_model_params(cfg: RunConfig, source: str) -> None:
    """Validate `model.params` against the model's constructor (a `ConfigError` naming each field's path)."""
    from dacdr.models.registry import ModelParamsError, validate_params

    try:
        validate_params(cfg.model.name, cfg.model.params)
    except KeyError as e:
        raise ConfigError(f"{source}: invalid configuration\n  model.name: {e.args[0]}") from e
    except ModelParamsError as e:
        raise ConfigError("\n".join([f"{source}: invalid configuration",
                                      *(f"  {loc}: {msg}" for loc, msg in e.errors)])) from e
