"""`generate`: a synthetic world written in the dataset layout, through `dacdr.data.dataset`'s own writer.

People are drawn block by block (`world.block_rows`) and streamed to ``interactions/part-NNNNN.parquet``, so
memory stays bounded by one row group whatever the number of users.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dacdr.data.dataset import REFERENCE_COLUMNS, SCHEMA_VERSION, DatasetSpec, write_dataset_parts
from dacdr.data.synthetic.config import (
    BEHAVIOUR_TYPES,
    BLOCK_USERS,
    DAY_SECONDS,
    SOURCE_DOMAIN,
    SyntheticConfig,
    get_preset,
)
from dacdr.data.synthetic.world import Rows, World, block_rng, block_rows, build_world, calibrate

__all__ = ["generate"]

# Rows buffered before a Parquet row group is written.
_ROW_GROUP_ROWS = 262_144
ITEM_FEATURES = ["category", "brand"]
DOMAIN_FEATURES = ["page_type", "business_line"]


def _strings(values: Any, codes: np.ndarray) -> pl.Series:
    """The strings ``values[codes]``, gathered without a Python loop over rows."""
    return pl.Series(list(values), dtype=pl.String).gather(codes.astype(np.int64))


def _spec(world: World, seed: int) -> DatasetSpec:
    cfg = world.cfg
    return DatasetSpec(
        schema_version=SCHEMA_VERSION,
        name=cfg.name,
        task="ctr",
        label_range=(0, 1),
        source_domain=SOURCE_DOMAIN,
        target_domains=cfg.target_names,
        item_features=ITEM_FEATURES,
        domain_features=DOMAIN_FEATURES,
        behaviour_types=list(BEHAVIOUR_TYPES),
        test_start=(cfg.n_days - 1) * DAY_SECONDS,
        has_timestamps=True,
        generator={
            "generator": "dacdr.data.synthetic",
            "seed": seed,
            "config": cfg.model_dump(mode="json"),
            # Derived constants (solved from the config), recorded for reproducibility; never a model input.
            "calibrated_bias": {key: round(v, 6) for key, v in world.bias.items()},
        },
    )


def _domains(world: World) -> pl.DataFrame:
    cfg = world.cfg
    return pl.DataFrame(
        {
            "domain": world.domains,
            "role": ["source"] + ["target"] * len(cfg.targets),
            "page_type": [cfg.source.page_type, *(t.page_type for t in cfg.targets)],
            "business_line": [cfg.source.business_line, *(t.business_line for t in cfg.targets)],
        },
        schema={"domain": pl.String, "role": pl.String, "page_type": pl.String, "business_line": pl.String},
    )


def _items(world: World) -> pl.DataFrame:
    cfg = world.cfg
    ids = [np.sort(sampler.items) for sampler in world.samplers]
    item = np.concatenate(ids)
    domain = np.concatenate([np.full(a.size, d, np.int8) for d, a in enumerate(ids)])
    category = [f"cat_{t:02d}" for t in range(cfg.n_topics)]
    brand = [f"brand_{b:04d}" for b in range(cfg.n_topics * cfg.brands_per_topic)]
    return pl.DataFrame(
        [
            pl.Series("item", item, dtype=pl.Int64),
            _strings(world.domains, domain).alias("domain"),
            _strings(category, world.item_topic[item]).alias("category"),
            _strings(brand, world.item_brand[item]).alias("brand"),
        ]
    )


def _frame(world: World, rows: Rows) -> pl.DataFrame:
    """One block's rows in the layout's columns; the references are null (not NaN) on source rows."""
    return pl.DataFrame(
        [
            pl.Series("user", rows.user, dtype=pl.Int64),
            _strings(world.domains, rows.domain).alias("domain"),
            pl.Series("item", rows.item, dtype=pl.Int64),
            _strings(BEHAVIOUR_TYPES, rows.behaviour).alias("behaviour"),
            pl.Series("label", rows.label, dtype=pl.Float64),
            pl.Series("timestamp", rows.timestamp, dtype=pl.Int64),
            *(
                pl.Series(name, getattr(rows, name), dtype=pl.Float64).fill_nan(None)
                for name in REFERENCE_COLUMNS
            ),
        ]
    )


def _row_groups(world: World, seed: int, blocks: range) -> Iterator[pl.DataFrame]:
    """The rows of ``blocks`` (block b = users b * BLOCK_USERS ..), in row groups of at least
    ``_ROW_GROUP_ROWS`` rows (the last one smaller)."""
    n_users = world.cfg.n_users
    pending: list[pl.DataFrame] = []
    rows = 0
    for b in blocks:
        first_user = b * BLOCK_USERS
        n = min(BLOCK_USERS, n_users - first_user)
        frame = _frame(world, block_rows(world, block_rng(seed, 1, b), first_user, n))
        pending.append(frame)
        rows += frame.height
        if rows >= _ROW_GROUP_ROWS:
            yield pl.concat(pending, rechunk=False)
            pending, rows = [], 0
    if pending:
        yield pl.concat(pending, rechunk=False)


def _parts(world: World, seed: int) -> Iterator[Iterator[pl.DataFrame]]:
    """One row-group iterator per part file; a part holds ``users_per_part`` users rounded up to whole
    blocks, so a user's rows never straddle two files."""
    cfg = world.cfg
    n_blocks = math.ceil(cfg.n_users / BLOCK_USERS)
    blocks_per_part = max(1, math.ceil(cfg.users_per_part / BLOCK_USERS))
    for first in range(0, n_blocks, blocks_per_part):
        yield _row_groups(world, seed, range(first, min(first + blocks_per_part, n_blocks)))


def generate(config: SyntheticConfig | str, out_dir: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Generate the synthetic world ``config`` (a config or a preset name) into ``out_dir``.

    Writes the layout of docs/data-format.md with `dacdr.data.dataset.write_dataset_parts` (validated, and
    appearing as one unit). Refuses a non-empty ``out_dir`` unless ``overwrite``; an empty one is replaced.
    The data is a pure function of (config, seed). Returns ``out_dir``.
    """
    cfg = get_preset(config) if isinstance(config, str) else config
    out = Path(out_dir)
    empty_dir = out.is_dir() and not any(out.iterdir())
    if out.exists() and not empty_dir and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    world = build_world(cfg, seed)
    calibrate(world, seed)
    return write_dataset_parts(
        _spec(world, seed), _domains(world), _items(world), _parts(world, seed), out, overwrite=overwrite or empty_dir
    )
