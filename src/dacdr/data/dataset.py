"""Load, validate and write a dacdr dataset directory (the layout of ``docs/data-format.md``).

Every check is a vectorised polars expression evaluated once over a whole table, so loading tens of
millions of interactions costs a few passes over memory; Python only runs per column and per check,
never per row. A failed check raises :class:`DatasetError` naming the file, the column, the problem and
one offending row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from polars.exceptions import PanicException
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from dacdr.fsutil import atomic_dir

__all__ = [
    "SCHEMA_VERSION",
    "CrossDomainData",
    "DatasetError",
    "DatasetSpec",
    "check_interaction_block",
    "interaction_files",
    "load_dataset",
    "load_static_tables",
    "read_spec",
    "validate",
    "write_dataset",
    "write_dataset_parts",
]

SCHEMA_VERSION = 1

SPEC_FILE = "dataset.json"
DOMAINS_FILE = "domains.parquet"
ITEMS_FILE = "items.parquet"
INTERACTIONS_FILE = "interactions.parquet"
INTERACTIONS_DIR = "interactions"

ROLES = ("source", "target")
INTERACTION_KEYS = ("user", "domain", "item", "behaviour", "timestamp")
INTERACTION_COLUMNS = (*INTERACTION_KEYS, "label")
# Reference click probabilities of a synthetic world (docs/synthetic.md), never model inputs: the oracle, the
# ceiling reachable from the source domain, and the histogram plug-in.
REFERENCE_COLUMNS = ("p_true", "p_transferable", "p_plugin")
OPTIONAL_INTERACTION_COLUMNS = REFERENCE_COLUMNS

# pyo3 panics (e.g. a parquet page that decodes to garbage) derive from BaseException, not Exception.
_READ_ERRORS = (Exception, PanicException)


class DatasetError(ValueError):
    """A dataset directory (or in-memory dataset) breaks the layout contract."""


# --------------------------------------------------------------------------------------------------
# dataset.json
# --------------------------------------------------------------------------------------------------


class DatasetSpec(BaseModel):
    """The ``dataset.json`` descriptor. Unknown keys are rejected; free-form provenance goes in
    ``generator``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int
    name: str
    task: Literal["ctr", "rating"]
    label_range: tuple[float, float]
    source_domain: str
    target_domains: list[str]
    item_features: list[str]
    domain_features: list[str]
    behaviour_types: list[str]
    test_start: int | None = None
    has_timestamps: bool = True
    generator: dict[str, Any] | None = None

    @property
    def domains(self) -> list[str]:
        """All domains, the source first."""
        return [self.source_domain, *self.target_domains]

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is not supported (this dacdr reads {SCHEMA_VERSION})"
            )
        if not self.name:
            raise ValueError("name must not be empty")
        lo, hi = self.label_range
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"label_range must be finite [min, max] with min < max, got {list(self.label_range)}")
        if self.task == "ctr" and (lo, hi) != (0.0, 1.0):
            raise ValueError(f"label_range must be [0, 1] for task 'ctr', got {list(self.label_range)}")
        if not self.target_domains:
            raise ValueError("target_domains must not be empty")
        if self.source_domain in self.target_domains:
            raise ValueError(f"source_domain {self.source_domain!r} is also listed in target_domains")
        if not self.behaviour_types:
            raise ValueError("behaviour_types must not be empty")
        for key, values, reserved in (
            ("target_domains", self.target_domains, ()),
            ("item_features", self.item_features, ("item", "domain")),
            ("domain_features", self.domain_features, ("domain", "role")),
            ("behaviour_types", self.behaviour_types, ()),
        ):
            if any(not v for v in values):
                raise ValueError(f"{key} contains an empty name")
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"{key} lists {dupes} more than once")
            clash = [v for v in values if v in reserved]
            if clash:
                raise ValueError(f"{key} must not contain the reserved column name(s) {clash}")
        return self


def read_spec(path: str | Path) -> DatasetSpec:
    """Read and validate ``dataset.json`` of a dataset directory (or the file itself)."""
    path = Path(path)
    file = path / SPEC_FILE if path.is_dir() else path
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{SPEC_FILE}: file not found in {file.parent}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{SPEC_FILE}: cannot be read: {e}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{SPEC_FILE}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{SPEC_FILE}: must hold a JSON object, got {type(raw).__name__}")
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as e:
        raise DatasetError(f"{SPEC_FILE}: {_describe_validation_error(e)}") from None


def _describe_validation_error(e: ValidationError) -> str:
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "missing":
        return f"key '{key}': missing"
    if err["type"] == "extra_forbidden":
        return f"key '{key}': unknown key"
    msg = err["msg"].removeprefix("Value error, ")
    if not key:
        return msg
    return f"key '{key}': {msg} (got {err.get('input')!r})"


# --------------------------------------------------------------------------------------------------
# The in-memory dataset
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrossDomainData:
    """A validated dataset: the descriptor and its three tables.

    ``interactions``: user, domain, item, behaviour, label (Float64), timestamp (Int64) [, p_true, p_transferable, p_plugin];
    ``items``: item, domain, *item_features; ``domains``: domain, role, *domain_features.
    """

    spec: DatasetSpec
    interactions: pl.DataFrame
    items: pl.DataFrame
    domains: pl.DataFrame
    path: Path | None = None


# --------------------------------------------------------------------------------------------------
# Row locations: which file (and row within it) a row of a concatenated table came from
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """File names of one table's parts and their row counts, to report file-local row numbers."""

    files: list[str]
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))

    @staticmethod
    def single(name: str) -> _Source:
        return _Source([name])

    def locate(self, row: int) -> tuple[str, int]:
        part = int(np.searchsorted(self.offsets, row, side="right")) - 1
        part = min(max(part, 0), len(self.files) - 1)
        return self.files[part], row - int(self.offsets[part])

    @property
    def label(self) -> str:
        return self.files[0] if len(self.files) == 1 else f"{INTERACTIONS_DIR}/part-*.parquet"


def _format_row(row: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in row.items()) + "}"


def _example(df: pl.DataFrame, row: int, source: _Source) -> tuple[str, str]:
    """(file name, " e.g. row N: {...}") for global row ``row`` of ``df``."""
    file, local = source.locate(row)
    return file, f", e.g. row {local}: {_format_row(df.row(row, named=True))}"


def _fail(df: pl.DataFrame, source: _Source, column: str, problem: str, row: int | None) -> DatasetError:
    if row is None or df.height == 0:
        return DatasetError(f"{source.label}: column '{column}': {problem}")
    file, example = _example(df, row, source)
    return DatasetError(f"{file}: column '{column}': {problem}{example}")


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _fmt(x: float) -> str:
    return f"{x:g}"


# --------------------------------------------------------------------------------------------------
# Column types: the canonical dtype of each column, and which stored dtypes cast to it harmlessly
# --------------------------------------------------------------------------------------------------

# Column kinds: "id" (Int64 or String), "str" (String), "float" (Float64), "int" (Int64),
# "feature" (String or Int64, like "id").
_KIND_DOC = {
    "id": "int64 or string",
    "feature": "string or int64",
    "str": "string",
    "float": "float64",
    "int": "integer (int64)",
}


def _is_stringlike(dtype: pl.DataType) -> bool:
    return dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)


def _target_dtype(kind: str, dtype: pl.DataType) -> pl.DataType | None:
    """The canonical dtype a stored ``dtype`` of a ``kind`` column casts to, or None if it must be
    rejected. An all-null (Null dtype) column is cast so that the null-key check reports it."""
    if kind in ("id", "feature"):
        if _is_stringlike(dtype):
            return pl.String()
        if dtype.is_integer() or dtype == pl.Null:
            return pl.Int64()
        return None
    if kind == "str":
        return pl.String() if _is_stringlike(dtype) or dtype == pl.Null else None
    if kind == "float":
        return pl.Float64() if dtype.is_integer() or dtype.is_float() or dtype == pl.Null else None
    if kind == "int":
        return pl.Int64() if dtype.is_integer() or dtype == pl.Null else None
    raise AssertionError(kind)


def _is_canonical(kind: str, dtype: pl.DataType) -> bool:
    if kind in ("id", "feature"):
        return dtype in (pl.Int64, pl.String)
    return dtype == {"str": pl.String, "float": pl.Float64, "int": pl.Int64}[kind]


def _table_kinds(table: str, spec: DatasetSpec) -> dict[str, str]:
    """Required columns of ``table`` and their kinds (optional columns excluded)."""
    if table == "domains":
        return {"domain": "str", "role": "str", **{f: "str" for f in spec.domain_features}}
    if table == "items":
        return {"item": "id", "domain": "str", **{f: "feature" for f in spec.item_features}}
    return {
        "user": "id",
        "domain": "str",
        "item": "id",
        "behaviour": "str",
        "label": "float",
        "timestamp": "int",
    }


def _all_kinds(table: str, spec: DatasetSpec) -> dict[str, str]:
    kinds = _table_kinds(table, spec)
    if table == "interactions":
        kinds |= {c: "float" for c in REFERENCE_COLUMNS}
    return kinds


def _check_columns(df: pl.DataFrame, kinds: dict[str, str], source: _Source, *, cast: bool) -> pl.DataFrame:
    """Check presence and dtype of every column in ``kinds`` present or required; with ``cast``,
    cast harmless dtypes to the canonical one (else require the canonical dtype)."""
    schema = df.schema
    optional = set(OPTIONAL_INTERACTION_COLUMNS)
    for col, kind in kinds.items():
        if col not in schema:
            if col in optional:
                continue
            present = ", ".join(schema.names()) or "none"
            raise DatasetError(f"{source.label}: column '{col}': missing (columns present: {present})")
        dtype = schema[col]
        target = _target_dtype(kind, dtype) if cast else (dtype if _is_canonical(kind, dtype) else None)
        if target is None:
            problem = f"has dtype {dtype}, expected {_KIND_DOC[kind]}"
            if kind == "int" and (dtype.is_float() or dtype == pl.String or dtype.is_temporal()):
                problem += " (timestamps must be integer seconds or another integer clock)"
            raise _fail(df, source, col, problem, 0)
        if target != dtype:
            try:
                df = df.with_columns(pl.col(col).cast(target, strict=True))
            except pl.exceptions.PolarsError as e:
                raise _fail(df, source, col, f"cannot be cast from {dtype} to {target}: {e}", None) from None
    return df


# --------------------------------------------------------------------------------------------------
# Value checks
# --------------------------------------------------------------------------------------------------

# One check: (column, problem text, boolean expression true on offending rows).
_Check = tuple[str, str, pl.Expr]


def _run_checks(df: pl.DataFrame, checks: Sequence[_Check], source: _Source) -> None:
    """Evaluate all ``checks`` in one vectorised pass; raise for the first one that fails."""
    if not checks or df.height == 0:
        return
    exprs: list[pl.Expr] = []
    for i, (_, _, bad) in enumerate(checks):
        bad = bad.fill_null(False)
        exprs += [bad.sum().alias(f"n{i}"), bad.arg_max().alias(f"r{i}")]
    stats = df.select(exprs).row(0)
    for i, (col, problem, _) in enumerate(checks):
        n, row = stats[2 * i], stats[2 * i + 1]
        if n:
            raise _fail(df, source, col, f"{_rows(n)} {problem}", int(row))


def _null_checks(columns: Sequence[str]) -> list[_Check]:
    return [(c, "with a null value", pl.col(c).is_null()) for c in columns]


def _in_set(col: str, allowed: Sequence[str], where: str) -> _Check:
    listed = ", ".join(repr(v) for v in allowed)
    return (col, f"with a {col} not in {where} [{listed}]", ~pl.col(col).is_in(list(allowed)))


def _check_domains(df: pl.DataFrame, spec: DatasetSpec, source: _Source) -> None:
    _run_checks(
        df,
        [
            *_null_checks(["domain", "role", *spec.domain_features]),
            ("domain", "with a duplicate domain (must be unique)", ~pl.col("domain").is_first_distinct()),
            _in_set("role", ROLES, "the allowed roles"),
            _in_set("domain", spec.domains, f"{SPEC_FILE}'s domains"),
        ],
        source,
    )
    expected_role = {d: ("source" if d == spec.source_domain else "target") for d in spec.domains}
    _run_checks(
        df,
        [
            (
                "role",
                f"with a role that disagrees with {SPEC_FILE} (source_domain {spec.source_domain!r} is the only 'source')",
                pl.col("role") != pl.col("domain").replace_strict(expected_role, return_dtype=pl.String),
            )
        ],
        source,
    )
    missing = sorted(set(spec.domains) - set(df["domain"].to_list()))
    if missing:
        raise DatasetError(f"{source.label}: column 'domain': domain(s) {missing} listed in {SPEC_FILE} have no row")


def _check_items(df: pl.DataFrame, spec: DatasetSpec, source: _Source) -> None:
    # Item features may be null: a missing category/brand is an ordinary value for the vocabulary.
    _run_checks(
        df,
        [
            *_null_checks(["item", "domain"]),
            _in_set("domain", spec.domains, DOMAINS_FILE),
            (
                "item",
                "with a duplicate (item, domain) pair (must be unique)",
                ~pl.struct("item", "domain").is_first_distinct(),
            ),
        ],
        source,
    )


def _check_interactions(
    df: pl.DataFrame, items: pl.DataFrame, spec: DatasetSpec, source: _Source, items_source: _Source
) -> None:
    if df.schema["item"] != items.schema["item"]:
        raise _fail(
            df,
            source,
            "item",
            f"has dtype {df.schema['item']} but {items_source.label} column 'item' has {items.schema['item']}",
            0,
        )
    lo, hi = spec.label_range
    label = pl.col("label")
    checks: list[_Check] = [
        *_null_checks([*INTERACTION_KEYS, "label"]),
        _in_set("domain", spec.domains, DOMAINS_FILE),
        _in_set("behaviour", spec.behaviour_types, "behaviour_types"),
        ("label", "with a NaN label", label.is_nan()),
        ("label", f"outside label_range [{_fmt(lo)}, {_fmt(hi)}]", (label < lo) | (label > hi)),
    ]
    if spec.task == "ctr":
        checks.append(("label", "neither 0 nor 1 (task 'ctr' needs click labels)", ~label.is_in([0.0, 1.0])))
    for col in (c for c in REFERENCE_COLUMNS if c in df.columns):
        p = pl.col(col)
        checks.append((col, "NaN or outside [0, 1]", p.is_nan() | (p < 0) | (p > 1)))
    _run_checks(df, checks, source)

    # (item, domain) must exist in items: an anti join, reporting the lowest offending row.
    missing = (
        df.lazy()
        .select("item", "domain")
        .with_row_index("__row")
        .join(items.lazy().select("item", "domain"), on=["item", "domain"], how="anti")
        .select(pl.len().alias("n"), pl.col("__row").min().alias("row"))
        .collect()
        .row(0)
    )
    if missing[0]:
        raise _fail(
            df, source, "item", f"{_rows(missing[0])} with an (item, domain) not in {items_source.label}", missing[1]
        )


def _validate(
    data: CrossDomainData,
    sources: dict[str, _Source] | None = None,
    *,
    interactions_required: bool = True,
) -> None:
    sources = sources or {
        "domains": _Source.single(DOMAINS_FILE),
        "items": _Source.single(ITEMS_FILE),
        "interactions": _Source.single(INTERACTIONS_FILE),
    }
    spec = data.spec
    _check_columns(data.domains, _all_kinds("domains", spec), sources["domains"], cast=False)
    _check_domains(data.domains, spec, sources["domains"])
    _check_columns(data.items, _all_kinds("items", spec), sources["items"], cast=False)
    _check_items(data.items, spec, sources["items"])
    if interactions_required:
        _check_columns(data.interactions, _all_kinds("interactions", spec), sources["interactions"], cast=False)
    _check_interactions(data.interactions, data.items, spec, sources["interactions"], sources["items"])


def validate(data: CrossDomainData) -> None:
    """Check ``data`` against the layout contract; raise :class:`DatasetError` on the first problem.

    Columns must already have their canonical dtypes (``load_dataset`` casts harmless ones on read).
    """
    if not isinstance(data.spec, DatasetSpec):
        raise DatasetError(f"{SPEC_FILE}: spec must be a DatasetSpec, got {type(data.spec).__name__}")
    _validate(data)


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _read_parquet(file: Path, name: str, columns: list[str] | None = None) -> pl.DataFrame:
    """Read one parquet file; any failure becomes a DatasetError naming the file."""
    if not file.is_file():
        raise DatasetError(f"{name}: file not found in {file.parent}")
    try:
        schema = pl.read_parquet_schema(file)
        if columns is not None:
            columns = [c for c in columns if c in schema]
        return pl.read_parquet(file, columns=columns)
    except _READ_ERRORS as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"{name}: not a readable parquet file ({detail})") from None


def interaction_files(root: Path) -> list[tuple[Path, str]]:
    """(file, name shown in messages) of every interactions part of the dataset at `root`, in order."""
    single = root / INTERACTIONS_FILE
    parts = sorted((root / INTERACTIONS_DIR).glob("part-*.parquet"))
    if single.exists() and parts:
        raise DatasetError(
            f"{INTERACTIONS_FILE}: both {INTERACTIONS_FILE} and {INTERACTIONS_DIR}/part-*.parquet exist; keep one"
        )
    if single.exists():
        return [(single, INTERACTIONS_FILE)]
    if not parts:
        raise DatasetError(f"{INTERACTIONS_FILE}: file not found in {root} (nor {INTERACTIONS_DIR}/part-*.parquet)")
    return [(p, f"{INTERACTIONS_DIR}/{p.name}") for p in parts]


def _read_interactions(root: Path, spec: DatasetSpec, wanted: list[str] | None) -> tuple[pl.DataFrame, _Source]:
    kinds = _all_kinds("interactions", spec)
    frames: list[pl.DataFrame] = []
    names: list[str] = []
    for file, name in interaction_files(root):
        part = _read_parquet(file, name, wanted)
        part = _check_columns(part, kinds, _Source.single(name), cast=True)
        if frames and part.columns != frames[0].columns:
            raise DatasetError(
                f"{name}: columns {part.columns} differ from {names[0]}'s {frames[0].columns} "
                "(all parts must have the same columns)"
            )
        frames.append(part)
        names.append(name)
    offsets = np.cumsum([0] + [f.height for f in frames[:-1]]).astype(np.int64)
    # No rechunk: parts stay separate chunks, which avoids copying tens of millions of rows.
    df = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical", rechunk=False)
    return df, _Source(names, offsets)


def _read_static(root: Path) -> tuple[DatasetSpec, pl.DataFrame, pl.DataFrame]:
    if not root.is_dir():
        raise DatasetError(f"{root}: not a dataset directory")
    spec = read_spec(root)
    domains = _read_parquet(root / DOMAINS_FILE, DOMAINS_FILE)
    domains = _check_columns(domains, _all_kinds("domains", spec), _Source.single(DOMAINS_FILE), cast=True)
    items = _read_parquet(root / ITEMS_FILE, ITEMS_FILE)
    items = _check_columns(items, _all_kinds("items", spec), _Source.single(ITEMS_FILE), cast=True)
    return spec, domains, items


def load_static_tables(path: str | Path) -> CrossDomainData:
    """The descriptor, domains and items of a dataset, validated, with an empty interactions table: what an
    out-of-core reader needs before it reads the interactions part by part (`check_interaction_block`)."""
    root = Path(path)
    spec, domains, items = _read_static(root)
    _check_domains(domains, spec, _Source.single(DOMAINS_FILE))
    _check_items(items, spec, _Source.single(ITEMS_FILE))
    return CrossDomainData(spec=spec, interactions=pl.DataFrame(), items=items, domains=domains, path=root)


def check_interaction_block(static: CrossDomainData, block: pl.DataFrame, name: str, first_row: int = 0) -> pl.DataFrame:
    """Validate one block of interactions (cast to the canonical dtypes) against the static tables.

    `name` is the file the block comes from and `first_row` its first row's number in that file, so an error
    names the file and its file-local row, as `load_dataset` does.
    """
    source = _Source([name], np.array([-first_row], dtype=np.int64))
    block = _check_columns(block, _all_kinds("interactions", static.spec), source, cast=True)
    _check_interactions(block, static.items, static.spec, source, _Source.single(ITEMS_FILE))
    return block


def load_dataset(path: str | Path, *, columns: list[str] | None = None) -> CrossDomainData:
    """Read and validate a dataset directory.

    ``columns``: the interaction columns to keep (default: all). The required columns are read and
    validated regardless; the others are dropped after validation, so a frame loaded with ``columns``
    may lack required columns (and would then fail :func:`validate`).
    """
    root = Path(path)
    spec, domains, items = _read_static(root)

    required = list(_table_kinds("interactions", spec))
    wanted = None if columns is None else list(dict.fromkeys([*required, *columns]))
    interactions, source = _read_interactions(root, spec, wanted)
    if columns is not None:
        unknown = [c for c in columns if c not in interactions.columns]
        if unknown:
            raise DatasetError(
                f"{source.label}: column '{unknown[0]}': requested but not present "
                f"(columns present: {', '.join(interactions.columns)})"
            )

    data = CrossDomainData(spec=spec, interactions=interactions, items=items, domains=domains, path=root)
    _validate(
        data,
        {"domains": _Source.single(DOMAINS_FILE), "items": _Source.single(ITEMS_FILE), "interactions": source},
        interactions_required=False,  # already checked (and cast) part by part
    )
    if columns is not None:
        data = CrossDomainData(
            spec=spec, interactions=interactions.select(columns), items=items, domains=domains, path=root
        )
    return data


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _write_parquet(df: pl.DataFrame, file: Path) -> None:
    df.write_parquet(file, compression="zstd", statistics=True)


def write_dataset(
    data: CrossDomainData,
    path: str | Path,
    *,
    overwrite: bool = False,
    rows_per_part: int | None = None,
    check: bool = True,
) -> Path:
    """Write ``data`` as a dataset directory at ``path`` and return the path.

    The directory appears atomically: everything is written into a temporary sibling that is then
    renamed into place, so a reader never sees half a dataset. ``rows_per_part`` splits interactions
    into ``interactions/part-NNNNN.parquet`` files. ``check`` validates first (turn off only to write
    deliberately broken data, e.g. in tests).
    """
    if check:
        validate(data)
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    if rows_per_part is not None and rows_per_part < 1:
        raise ValueError(f"rows_per_part must be >= 1, got {rows_per_part}")
    with atomic_dir(path, overwrite=overwrite, fault="dataset") as tmp:
        (tmp / SPEC_FILE).write_text(json.dumps(data.spec.model_dump(mode="json"), indent=2) + "\n")
        _write_parquet(data.domains, tmp / DOMAINS_FILE)
        _write_parquet(data.items, tmp / ITEMS_FILE)
        if rows_per_part is None:
            _write_parquet(data.interactions, tmp / INTERACTIONS_FILE)
        else:
            (tmp / INTERACTIONS_DIR).mkdir()
            n_parts = max(1, -(-data.interactions.height // rows_per_part))
            for i in range(n_parts):
                chunk = data.interactions.slice(i * rows_per_part, rows_per_part)
                _write_parquet(chunk, tmp / INTERACTIONS_DIR / f"part-{i:05d}.parquet")
    return path


def write_dataset_parts(
    spec: DatasetSpec,
    domains: pl.DataFrame,
    items: pl.DataFrame,
    parts: Iterable[Iterable[pl.DataFrame]],
    path: str | Path,
    *,
    overwrite: bool = False,
    check: bool = True,
) -> Path:
    """Write a dataset whose interactions arrive in blocks, never all in memory; return the path.

    ``parts`` yields one iterable per ``interactions/part-NNNNN.parquet`` file, which yields that file's
    blocks (one parquet row group each). With ``check``, the spec, domains and items are validated first and
    each block as it arrives (`check_interaction_block`), so memory stays bounded by one block. The
    directory appears atomically, as with :func:`write_dataset`.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    static = CrossDomainData(spec=spec, interactions=pl.DataFrame(), items=items, domains=domains)
    if check:
        _check_columns(domains, _all_kinds("domains", spec), _Source.single(DOMAINS_FILE), cast=False)
        _check_domains(domains, spec, _Source.single(DOMAINS_FILE))
        _check_columns(items, _all_kinds("items", spec), _Source.single(ITEMS_FILE), cast=False)
        _check_items(items, spec, _Source.single(ITEMS_FILE))
    with atomic_dir(path, overwrite=overwrite, fault="dataset") as tmp:
        (tmp / SPEC_FILE).write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
        _write_parquet(domains, tmp / DOMAINS_FILE)
        _write_parquet(items, tmp / ITEMS_FILE)
        (tmp / INTERACTIONS_DIR).mkdir()
        columns: list[str] | None = None
        for i, blocks in enumerate(parts):
            name = f"{INTERACTIONS_DIR}/part-{i:05d}.parquet"
            writer: pq.ParquetWriter | None = None
            rows = 0
            try:
                for block in blocks:
                    if columns is not None and block.columns != columns:
                        raise DatasetError(f"{name}: columns {block.columns} differ from the first block's {columns}")
                    columns = block.columns
                    if check:
                        block = check_interaction_block(static, block, name, first_row=rows)
                    table = block.to_arrow()
                    if writer is None:
                        writer = pq.ParquetWriter(tmp / name, table.schema, compression="zstd")
                    writer.write_table(table, row_group_size=max(table.num_rows, 1))
                    rows += table.num_rows
            finally:
                if writer is not None:
                    writer.close()
            if writer is None:
                raise DatasetError(f"{name}: the part has no block")
        if columns is None:
            raise DatasetError(f"{INTERACTIONS_DIR}: no interaction part was given")
    return path
