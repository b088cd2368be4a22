"""Loaders: public rating / implicit-feedback datasets -> the dacdr layout (docs/data-format.md).

One module per source format, each declaring its own options and registering itself
(:mod:`dacdr.data.loaders.base`): ``amazon`` (the Amazon dumps), ``table`` (any CSV / TSV / Parquet),
``recbole`` (RecBole atomic files), ``cdrib``. This package imports every module in it, so a new loader is
one file. :data:`ConvertConfig` is the union of the registered options, told apart by ``format``;
:func:`convert` streams the raw files with bounded memory, writes malformed lines to ``<out>/rejects.tsv``
(never dropping them silently) and writes the dataset with :func:`dacdr.data.dataset.write_dataset`.
``docs/datasets.md`` documents every format.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from dacdr.data.dataset import CrossDomainData, write_dataset
from dacdr.data.loaders.base import LOADERS, LoaderOptions, register_loader
from dacdr.data.loaders.lines import Rejects

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

REJECTS_FILE = "rejects.tsv"
REPORT_FILE = "conversion.json"

ConvertConfig = Annotated[Union[tuple(dict.fromkeys(LOADERS.values()))], Field(discriminator="format")]  # noqa: UP007
"""What to convert: a format, one input per domain, and that format's options (a `LoaderOptions` subclass)."""
_ADAPTER: TypeAdapter[LoaderOptions] = TypeAdapter(ConvertConfig)


def convert_config(raw: dict[str, Any] | None = None, /, **fields: Any) -> LoaderOptions:
    """Validate a conversion config (a mapping, or keyword fields) into its format's options; a pydantic
    `ValidationError` names the format and the field (``cdrib.separator: Extra inputs are not permitted``)."""
    return _ADAPTER.validate_python({**(raw or {}), **fields})


def load(
    cfg: LoaderOptions, rejects: Rejects, log: Callable[[str], None] = print, stats: dict | None = None
) -> CrossDomainData:
    """Read the raw files of ``cfg`` into an in-memory dataset (validated when written).

    A missing input is a `FileNotFoundError` naming its field; a damaged file (truncated or corrupt gzip,
    corrupt Parquet, a folder) is a `DatasetError` naming it; a domain left with no ratings is one too.
    ``stats``, when given, receives ``merged_duplicates`` per domain.
    """
    cfg.check_paths()
    return cfg.load(rejects, log, stats)


def convert(
    cfg: LoaderOptions, out: str | Path, *, overwrite: bool = False, log: Callable[[str], None] = print
) -> Path:
    """Convert the raw files of ``cfg`` into a dataset directory at ``out``.

    Rejected lines go to ``<out>/rejects.tsv``; counts and timings to ``<out>/conversion.json``.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True to replace it)")
    t0 = time.perf_counter()
    staging = out.parent / f".{out.name}.rejects.tsv"
    rejects = Rejects(staging)
    stats: dict = {}
    try:
        try:
            data = load(cfg, rejects, log, stats)
        finally:
            rejects.close()
        write_dataset(data, out, overwrite=overwrite)
    except BaseException:
        staging.unlink(missing_ok=True)  # a failed conversion leaves nothing behind
        raise
    if staging.exists():
        staging.replace(out / REJECTS_FILE)
        rejects.path = out / REJECTS_FILE
    report = {
        "config": cfg.model_dump(mode="json"),
        "rows": data.interactions.height,
        "rows_per_domain": dict(data.interactions.group_by("domain").len().iter_rows()),
        "rejected_lines": rejects.count,
        "rejected_by_reason": rejects.by_reason,
        "merged_duplicates": stats.get("merged_duplicates", {}),
        "has_timestamps": data.spec.has_timestamps,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {out}: {data.interactions.height:,} interactions; {rejects.summary()}")
    return out


__all__ = ["LOADERS", "ConvertConfig", "LoaderOptions", "Rejects", "convert", "convert_config", "load",
           "register_loader"]
