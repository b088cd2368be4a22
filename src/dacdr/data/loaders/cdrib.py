"""The CDRIB cold-start splits (Cao et al., ICDE 2022): implicit feedback, fixed train / valid / test.

Layout: one folder per domain (``game_video/`` holds the game domain, ``video_game/`` the video domain),
each with ``train.txt``, ``valid.txt``, ``test.txt`` of ``user<TAB>item`` lines. User ids below
``n_shared_users`` are the same person in both folders; ids from there up are users of one domain only and
are namespaced by domain here (``game:2179`` and ``video:2179`` are different people). Item ids are per
domain and namespaced the same way.

The conversion for the direction ``source -> target`` (a CTR dataset, ``has_timestamps: false``):

- source rows: the source folder's ``train.txt`` (behaviour ``positive``, label 1); they form the source
  sequences, in file order;
- target training rows: the target's ``train.txt`` positives, plus ``train_negatives`` label-0 rows
  (behaviour ``sampled_negative``) per positive, drawn uniformly from the target's training items the
  user never interacted with, fixed by ``negative_seed``;
- validation rows: the target's ``valid.txt`` positives, each with ``valid_negatives`` sampled negatives the
  same way, so the trainer's validation AUC selects models on ``valid.txt`` and never on the test file;
- test rows: the target's ``test.txt`` positives only; protocol P3 (``dacdr.ranking``) ranks each against
  999 sampled negatives at evaluation time.

There are no timestamps, so the converter writes a clock that orders source < target train < valid < test
(``generator.valid_start`` and ``test_start`` mark the periods); every target sample therefore sees the
user's whole source history, and protocol ``periods`` recovers the published split exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field

from dacdr.data.dataset import SCHEMA_VERSION, CrossDomainData, DatasetSpec
from dacdr.data.loaders.base import LoaderOptions, Log, register_loader
from dacdr.data.loaders.lines import Rejects
from dacdr.data.loaders.table import read_ratings_table

SPLITS = ("train", "valid", "test")


def _read_pairs(path: Path, rejects: Rejects) -> pl.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (a CDRIB folder holds train.txt, valid.txt, test.txt)")
    df, _, _ = read_ratings_table(path, {"user": "column_1", "item": "column_2", "rating": "column_1"}, rejects,
                                  separator="\t", header=False)
    bad = df.filter(~pl.col("user").str.contains(r"^\d+$") | ~pl.col("item").str.contains(r"^\d+$"))
    for row in bad.iter_rows(named=True):
        rejects.add(path.name, row["line"], "user and item must be integer ids", f"{row['user']}\t{row['item']}")
    return df.filter(~pl.col("line").is_in(bad["line"].implode())).select(
        pl.col("user").cast(pl.Int64), pl.col("item").cast(pl.Int64), "line"
    )


def _user_ids(users: pl.Expr, domain: str, n_shared: int) -> pl.Expr:
    return pl.when(users < n_shared).then(pl.format("u{}", users)).otherwise(pl.format(f"{domain}:{{}}", users))


def sample_negatives(
    users: np.ndarray, pool: np.ndarray, seen: set[tuple[int, int]] | np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` items per entry of ``users``, uniform from ``pool``, never an item in the user's ``seen`` keys.

    ``seen`` is a sorted int64 array of ``user * 2**32 + item`` keys. Vectorised: draw all, redraw the few
    collisions until none is left. Returns (user per negative, item per negative).
    """
    rep_users = np.repeat(users, k)
    items = pool[rng.integers(0, len(pool), size=len(rep_users))]
    for _ in range(1000):
        keys = rep_users.astype(np.int64) * (1 << 32) + items
        clash = np.isin(keys, seen)
        if not clash.any():
            return rep_users, items
        items[clash] = pool[rng.integers(0, len(pool), size=int(clash.sum()))]
    raise ValueError("cannot sample negatives: some user has interacted with (almost) every pool item")


def convert_cdrib(
    folders: dict[str, Path],
    source: str,
    target: str,
    *,
    n_shared_users: int,
    train_negatives: int = 4,
    valid_negatives: int = 99,
    negative_seed: int = 0,
    rejects: Rejects,
    name: str | None = None,
    log: Callable[[str], None] = print,
) -> CrossDomainData:
    """One direction of CDRIB as a dacdr CTR dataset (see the module docstring)."""
    for d in (source, target):
        if d not in folders:
            raise ValueError(f"no CDRIB folder for domain {d!r} (have {sorted(folders)})")
    src = _read_pairs(folders[source] / "train.txt", rejects)
    tgt = {s: _read_pairs(folders[target] / f"{s}.txt", rejects) for s in SPLITS}

    # Negatives: drawn from the target's training items, excluding every item the user has in the target.
    pool = np.unique(tgt["train"]["item"].to_numpy())
    all_tgt = pl.concat([tgt[s] for s in SPLITS])
    seen = np.unique(all_tgt["user"].to_numpy() * (1 << 32) + all_tgt["item"].to_numpy())
    rng = np.random.default_rng(negative_seed)
    parts: list[pl.DataFrame] = []

    def frame(users: np.ndarray, items: np.ndarray, label: float, behaviour: str) -> pl.DataFrame:
        return pl.DataFrame({"u": users, "i": items, "label": np.full(len(users), label),
                             "behaviour": [behaviour] * len(users)},
                            schema={"u": pl.Int64, "i": pl.Int64, "label": pl.Float64, "behaviour": pl.String})

    clock = 0
    periods: dict[str, int] = {}
    src_rows = frame(src["user"].to_numpy(), src["item"].to_numpy(), 1.0, "positive")
    parts.append(src_rows.with_columns(pl.lit(source).alias("domain")))
    clock += src_rows.height
    for split, k in (("train", train_negatives), ("valid", valid_negatives), ("test", 0)):
        periods[split] = clock
        pos = tgt[split]
        u, i = pos["user"].to_numpy(), pos["item"].to_numpy()
        rows = [frame(u, i, 1.0, "positive")]
        if k:
            nu, ni = sample_negatives(u, pool, seen, k, rng)
            rows.append(frame(nu, ni, 0.0, "sampled_negative"))
        block = pl.concat(rows).with_columns(pl.lit(target).alias("domain"))
        parts.append(block)
        clock += block.height
        log(f"{target} {split}: {pos.height:,} positives" + (f" + {k} sampled negatives each" if k else ""))

    inter = pl.concat(parts).with_columns(pl.int_range(0, pl.len(), dtype=pl.Int64).alias("timestamp"))
    inter = inter.select(
        pl.when(pl.col("domain") == source).then(_user_ids(pl.col("u"), source, n_shared_users))
        .otherwise(_user_ids(pl.col("u"), target, n_shared_users)).alias("user"),
        "domain",
        pl.format("{}:{}", pl.col("domain"), pl.col("i")).alias("item"),
        "behaviour",
        "label",
        "timestamp",
    )
    items = inter.select("item", "domain").unique(maintain_order=True)
    domains = pl.DataFrame({"domain": [source, target], "role": ["source", "target"]})
    spec = DatasetSpec(
        schema_version=SCHEMA_VERSION,
        name=name or f"cdrib-{source}-{target}",
        task="ctr",
        label_range=(0.0, 1.0),
        source_domain=source,
        target_domains=[target],
        item_features=[],
        domain_features=[],
        behaviour_types=["positive", "sampled_negative"],
        test_start=periods["test"],
        has_timestamps=False,
        generator={
            "format": "cdrib",
            "folders": {d: str(p) for d, p in folders.items()},
            "n_shared_users": n_shared_users,
            "train_negatives": train_negatives,
            "valid_negatives": valid_negatives,
            "negative_seed": negative_seed,
            "valid_start": periods["valid"],
            "train_start": periods["train"],
        },
    )
    return CrossDomainData(spec=spec, interactions=inter, items=items, domains=domains)


@register_loader
class CdribOptions(LoaderOptions):
    """One direction (`source` -> the first target) of the CDRIB splits; `files`: domain -> its folder."""

    format: Literal["cdrib"]
    n_shared_users: int = Field(gt=0, description="user ids below this are shared (2179 for the published "
                                "game / video splits)")
    train_negatives: int = Field(4, ge=1, description="sampled negatives per training positive")
    valid_negatives: int = Field(99, ge=1, description="sampled negatives per validation positive")
    negative_seed: int = Field(0, description="seed of the sampled training / validation negatives")

    folders: ClassVar[bool] = True

    def load(self, rejects: Rejects, log: Log = print, stats: dict | None = None) -> CrossDomainData:
        return convert_cdrib(
            {d: Path(p) for d, p in self.files.items()}, self.source, self.targets[0],
            n_shared_users=self.n_shared_users, train_negatives=self.train_negatives,
            valid_negatives=self.valid_negatives, negative_seed=self.negative_seed, rejects=rejects,
            name=self.name, log=log,
        )
