"""The CDRIB folder layout: namespaced users, sampled negatives, the published split recovered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from dacdr.data.dataset import load_dataset
from dacdr.data.loaders import convert, convert_config
from dacdr.data.samples import prepare

N_SHARED = 3


def write_cdrib(root: Path) -> dict[str, str]:
    """Users 0..2 shared; 0 and 1 are cold in video (valid / test there), 2 is cold in game."""
    rng = np.random.default_rng(0)
    folders = {"game": root / "game_video", "video": root / "video_game"}
    for f in folders.values():
        f.mkdir(parents=True)

    def pairs(users, n_items, per_user):
        return "".join(f"{u}\t{i}\n" for u in users for i in rng.choice(n_items, per_user, replace=False))

    # game: everyone but user 2 in train; user 2's game rows are valid / test of video -> game
    (folders["game"] / "train.txt").write_text(pairs([0, 1, 3, 4, 5], 30, 5))
    (folders["game"] / "valid.txt").write_text("2\t0\n")
    (folders["game"] / "test.txt").write_text("2\t1\n")
    (folders["video"] / "train.txt").write_text(pairs([2, 3, 4, 5, 6], 25, 6))
    (folders["video"] / "valid.txt").write_text("0\t0\n1\t1\n")
    (folders["video"] / "test.txt").write_text("0\t2\n0\t3\n1\t4\n")
    return {d: str(p) for d, p in folders.items()}


def test_cdrib_conversion_and_periods_split(tmp_path):
    files = write_cdrib(tmp_path / "raw")
    cfg = convert_config(format="cdrib", name="c", source="game", targets=["video"], files=files,
                        n_shared_users=N_SHARED, train_negatives=2, valid_negatives=5, negative_seed=1)
    data = load_dataset(convert(cfg, tmp_path / "ds", log=lambda _: None))
    inter = data.interactions
    assert data.spec.task == "ctr" and not data.spec.has_timestamps
    # ids >= n_shared are different people in each domain; shared ids are one person
    assert set(inter.filter(pl.col("domain") == "game")["user"]) == {"u0", "u1", "game:3", "game:4", "game:5"}
    assert "video:3" in set(inter["user"]) and "u2" in set(inter["user"])
    # negatives: never an item the user has in the target (any split), always a training item
    video = inter.filter(pl.col("domain") == "video")
    pos = video.filter(pl.col("label") == 1)
    neg = video.filter(pl.col("label") == 0)
    assert neg.join(pos, on=["user", "item"], how="inner").height == 0
    train_start = data.spec.generator["train_start"]
    valid_start = data.spec.generator["valid_start"]
    train_items = set(pos.filter(pl.col("timestamp") < valid_start)["item"])
    assert set(neg["item"]) <= train_items
    assert neg.filter(pl.col("timestamp") < valid_start).height == 2 * 30
    assert neg.filter(pl.col("timestamp") >= valid_start).height == 5 * 2

    prepared = prepare(data, protocol="periods", max_len=10)
    s, split = prepared.samples, prepared.split
    users = prepared.vocabs["user"].values
    test_pairs = sorted((users[s["user"][i] - 2], prepared.vocabs["item"].values[s["item"][i] - 2])
                        for i in split.test)
    assert test_pairs == [("u0", "video:2"), ("u0", "video:3"), ("u1", "video:4")]
    assert len(split.valid) == 2 * 6 and (s["label"][split.valid] == 1).sum() == 2
    assert len(split.train_target) == 30 * 3 and train_start > 0
    # every target sample sees the user's whole game history
    seq_len = s["seq_end"][split.test] - s["seq_start"][split.test]
    assert (seq_len == 5).all()
