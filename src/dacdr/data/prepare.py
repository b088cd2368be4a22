"""From a validated `DataConfig` to training-ready data: the one entry point of the data path.

`prepare(cfg)` locates (or generates) the dataset, builds its samples in memory (`dacdr.data.samples`) or
out of core (`dacdr.data.streaming`), and caches the result under a key that hashes the dataset's files and
the *whole* validated config section, so one config always lands in one cache entry whoever calls it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from dacdr.config import DataConfig
from dacdr.data.protocol import TrainingData

Log = Callable[[str], None]

CACHE_FORMAT = 2  # bump when the cached arrays change meaning
# Fields that say where things are, not what the samples hold: they do not enter the cache key (the
# dataset's content does, through its fingerprint).
_LOCATION_FIELDS = {"path", "synthetic", "synthetic_seed", "cache_dir"}


def dataset_path(data: DataConfig, root: str | Path = "data") -> Path:
    """The dataset directory of a config, generating the synthetic preset on first use."""
    if data.path is not None:
        return Path(data.path)
    from dacdr.data.synthetic import generate

    out = Path(root) / f"synthetic-{data.synthetic}-seed{data.synthetic_seed}"
    if not (out / "dataset.json").exists():
        generate(data.synthetic, out, seed=data.synthetic_seed)
    return out


def dataset_fingerprint(path: Path) -> str:
    """Cheap identity of a dataset directory: names, sizes and mtimes of its files."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and ".cache" not in p.parts:
            st = p.stat()
            h.update(f"{p.relative_to(path)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def cache_key(data: DataConfig, path: Path) -> str:
    """The cache entry of `data`: the dataset's fingerprint and every field of the section that shapes samples."""
    fields = data.model_dump(mode="json", exclude=_LOCATION_FIELDS)
    src = json.dumps({"fp": dataset_fingerprint(path), "fmt": CACHE_FORMAT, "data": fields}, sort_keys=True)
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def cache_entry(data: DataConfig, path: Path) -> Path:
    """Where `prepare(data)` keeps (or will keep) its result for the dataset at `path`."""
    root = Path(data.cache_dir) if data.cache_dir else path / ".cache"
    return root / f"{'stream' if data.streaming else 'samples'}-{cache_key(data, path)}"


def prepare(data: DataConfig, *, data_root: str | Path = "data", log: Log = print) -> TrainingData:
    """Samples, sequences and split of `data`, from the cache when an entry for this exact section exists."""
    from dacdr.data.samples import PreparedData, build
    from dacdr.data.streaming import StreamingData, build_streaming, check_options
    from dacdr.fsutil import atomic_dir

    check_options(data)
    path = dataset_path(data, data_root)
    target = cache_entry(data, path)
    kind: type[PreparedData] | type[StreamingData] = StreamingData if data.streaming else PreparedData
    if (target / "meta.json").exists():
        try:
            return kind.load(target)
        except (OSError, ValueError, KeyError) as e:  # a damaged cache is rebuilt, never trusted
            log(f"sample cache {target} unreadable ({e}); rebuilding")
            shutil.rmtree(target, ignore_errors=True)
    if data.streaming:
        with atomic_dir(target, shared=True, fault="cache") as tmp:
            build_streaming(path, tmp, data, log)
        return StreamingData.load(target)
    prepared = build(path, data)
    with atomic_dir(target, shared=True, fault="cache") as tmp:
        prepared.save(tmp)
    return prepared


__all__ = ["cache_entry", "cache_key", "dataset_fingerprint", "dataset_path", "prepare"]
