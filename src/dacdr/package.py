"""Model packages: a trained model as one versioned, checksummed directory that loads without executing code.

```
PKG/
  manifest.json       schema version, package version, model name, sha256 of every file below, and
                      `checksum`, the sha256 of every other field of the manifest
  model.safetensors   weights (safetensors: tensors only, no pickle)
  model.json          registry name, constructor params, FeatureSpec
  vocabs.json         the id vocabularies (raw value -> index; PAD=0, OOV=1)
  tables.safetensors  item_table [items, item fields], domain_table [domains, domain fields]
  domains.json        the domain registry: name, index, role, domain-feature values
  metrics.json        the run's test metrics (results.json of the run), or {}
  store.sqlite        each user's most recent source behaviours of the training period (`HistoryStore`)
  model.onnx, model.torchscript.pt (+ .json sidecars)   optional, added by `dacdr export`, listed and checksummed
```

`load_package` checks, before anything is built, that the manifest's checksum covers its fields, that every
listed file is a plain file inside the package with the recorded sha256 (an export present but unlisted is
refused), that the weights match the described shapes, and that the files agree with each other (vocabulary
sizes, table shapes, store fields); any failure is a `PackageError` naming the file by its name in the
package, never by a path outside it. Packages are written and re-published (export) as one unit
(`dacdr.fsutil.atomic_dir`): a crash leaves the old package or the new one, never neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dacdr.data.features import FIRST_ID, OOV, Vocabularies
from dacdr.data.protocol import TrainingData
from dacdr.fsutil import atomic_dir, recover_dir, remove_stale_temps, sha256_file, write_atomic
from dacdr.models import RecModel
from dacdr.training.checkpoint import CheckpointError, load_model, save_model
from dacdr.training.rundir import RunDir

PACKAGE_SCHEMA = 2
"""2: `checksum` covers every manifest field, exports are listed (1: it covered the file list only)"""
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
DESCRIPTION = "model.json"
VOCABS = "vocabs.json"
TABLES = "tables.safetensors"
DOMAINS = "domains.json"
METRICS = "metrics.json"
STORE = "store.sqlite"
PACKAGE_FILES = (WEIGHTS, DESCRIPTION, VOCABS, TABLES, DOMAINS, METRICS, STORE)
EXPORT_FILES = ("model.onnx", "model.onnx.json", "model.torchscript.pt", "model.torchscript.pt.json",
                "retrieval.safetensors")
"""optional files `dacdr export` (and `dacdr index`) add; when present they must be listed in the manifest"""
STORE_FORMAT = 1


class PackageError(ValueError):
    """A package file that is missing, tampered with, or inconsistent with the others."""


def _content_digest(files: dict[str, str]) -> str:
    """The digest of the model files alone: what the package version is named after."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of every manifest field but `checksum` itself (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _seal(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest | {"checksum": _manifest_checksum(manifest)}


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    write_atomic(directory / MANIFEST, json.dumps(manifest, indent=1))


def _safe_name(name: Any) -> bool:
    """A manifest entry must be one of the package's own file names: no folders, `..` or absolute paths."""
    return isinstance(name, str) and name in (*PACKAGE_FILES, *EXPORT_FILES) and Path(name).name == name


# ------------------------------------------------------------------------------------------ history store


class HistoryStore:
    """Read-only SQLite store: user id -> the encoded tokens of her most recent source behaviours.

    One row per user; `tokens` is an int32 array [n, len(sequence_fields)] of vocabulary indices, oldest
    first, as the model's `seq` input expects. One connection per thread (SQLite connections are not
    shared across threads).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        try:
            meta = dict(self._conn().execute("SELECT key, value FROM meta").fetchall())
            self.fields: list[str] = json.loads(meta["sequence_fields"])
            self.history_len = int(meta["history_len"])
            self.format = int(meta["format"])
            self.n_users = int(meta["n_users"])
        except (sqlite3.Error, KeyError, ValueError) as e:
            raise PackageError(f"{self.path.name}: not a valid history store ({e})") from e
        if self.format != STORE_FORMAT:
            raise PackageError(f"{self.path.name}: store format {self.format}, expected {STORE_FORMAT}")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # immutable=1: no locking, no journal; the file never changes once the package is built.
            conn = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
            self._local.conn = conn
        return conn

    def history(self, user: str) -> np.ndarray | None:
        """The user's tokens [n, F] (n >= 1), or None for a user the store does not know."""
        row = self._conn().execute("SELECT n, tokens FROM history WHERE user = ?", (user,)).fetchone()
        if row is None:
            return None
        return np.frombuffer(row[1], dtype=np.int32).reshape(row[0], len(self.fields)).astype(np.int64)

    @staticmethod
    def build(
        path: Path, prepared: TrainingData, history_len: int, before: int | None
    ) -> int:
        """Write the store from the prepared source events with timestamp < `before`; returns users stored."""
        spec, ev = prepared.spec, prepared.source_events()
        keep = np.ones(len(ev["user"]), dtype=bool) if before is None else ev["timestamp"] < before
        users = ev["user"][keep]
        tokens = np.stack([ev[f][keep] for f in spec.sequence_fields], axis=1).astype(np.int32)
        # Events are sorted by (user, time): each user's block is contiguous, most recent last.
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
        ends = np.r_[starts[1:], len(users)].astype(np.int64)
        user_values = prepared.vocabs["user"].values
        path.unlink(missing_ok=True)
        conn = sqlite3.connect(path)
        try:
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("CREATE TABLE history (user TEXT PRIMARY KEY, n INTEGER NOT NULL, tokens BLOB NOT NULL)")
            rows = (
                (user_values[int(users[s]) - FIRST_ID], int(e - max(s, e - history_len)),
                 tokens[max(s, e - history_len):e].tobytes())
                for s, e in zip(starts, ends, strict=True)
            )
            conn.executemany("INSERT INTO history VALUES (?, ?, ?)", rows)
            meta = {"format": STORE_FORMAT, "sequence_fields": json.dumps(spec.sequence_fields),
                    "history_len": history_len, "n_users": len(starts),
                    "before_timestamp": "" if before is None else before}
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
            conn.commit()
            conn.execute("VACUUM")
        finally:
            conn.close()
        return len(starts)


# ------------------------------------------------------------------------------------------ the package


@dataclass
class ModelPackage:
    """A loaded, verified package: everything the service and the exporters need."""

    path: Path
    manifest: dict[str, Any]
    model: RecModel
    description: dict[str, Any]
    vocabs: Vocabularies
    item_table: np.ndarray
    domain_table: np.ndarray
    domains: list[dict[str, Any]]
    metrics: dict[str, Any]
    store: HistoryStore
    item_pools: dict[str, np.ndarray] = field(default_factory=dict)
    """domain name -> the item indices it can show (empty for packages built before pools were stored)"""

    @property
    def version(self) -> str:
        return self.manifest["package_version"]

    @property
    def spec(self):
        return self.model.spec

    def domain_index(self, name: str) -> int | None:
        for d in self.domains:
            if d["domain"] == name:
                return d["index"]
        return None


def run_prepared(run_dir: Path, log=print) -> tuple[TrainingData, Path]:
    """The prepared data of a run, with the run's own vocabularies when it has them (fine-tuned runs).

    Returns it with the dataset directory it came from.
    """
    from dacdr.data.prepare import dataset_path, prepare

    run = RunDir(run_dir)
    cfg = run.read_config()
    prepared = prepare(cfg.data)
    own = run.vocabularies()
    if own is not None:
        from dacdr.training.finetune import align_to_vocabularies

        prepared = align_to_vocabularies(prepared, own)  # type: ignore[arg-type]
    return prepared, dataset_path(cfg.data)


def domain_registry(prepared: TrainingData) -> list[dict[str, Any]]:
    spec, vocabs = prepared.spec, prepared.vocabs
    out = []
    for name in [spec.source_domain, *spec.target_domains]:
        idx = vocabs["domain"].lookup(name)
        row = prepared.domain_table[idx]
        feats = {f: vocabs[f].values[int(v) - FIRST_ID] if v >= FIRST_ID else None
                 for f, v in zip(spec.domain_fields[1:], row[1:], strict=True)}
        out.append({"domain": name, "index": int(idx),
                    "role": "source" if name == spec.source_domain else "target", "features": feats})
    return out


def item_pool_tensors(data_dir: Path, prepared: TrainingData) -> dict[str, torch.Tensor]:
    """Each domain's item pool (`items.parquet`) as CSR over domain indices: `pool_offsets`, `pool_items`."""
    import polars as pl

    listing = pl.read_parquet(Path(data_dir) / "items.parquet", columns=["domain", "item"])
    dom = prepared.vocabs["domain"].encode(listing["domain"])
    item = prepared.vocabs["item"].encode(listing["item"])
    order = np.lexsort((item, dom))
    counts = np.bincount(dom, minlength=len(prepared.vocabs["domain"]))
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    return {"pool_offsets": torch.from_numpy(offsets), "pool_items": torch.from_numpy(item[order].astype(np.int64))}


def build_package(
    run_dir: str | Path, out: str | Path, history_len: int | None = None, overwrite: bool = False, log=print
) -> Path:
    """Package a run directory (`model.safetensors`, `model.json`, `config.yaml`) into `out`, atomically."""
    from dacdr.data.dataset import read_spec

    run_dir, out = Path(run_dir), Path(out)
    recover_dir(out)  # a previous --overwrite killed between its renames: its old package comes back first
    remove_stale_temps(out)  # and half-written folders of killed builds go (one writer per package path)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass --overwrite to replace it)")
    model, desc = load_model(run_dir)
    prepared, data_dir = run_prepared(run_dir, log)
    spec = model.spec
    sizes = prepared.vocabs.sizes()
    bad = {f: (n, sizes.get(f)) for f, n in spec.vocab_sizes.items() if sizes.get(f) != n}
    if bad:
        raise PackageError(f"{run_dir}: model vocabulary sizes do not match the run's data: {bad} (model, data)")
    history_len = history_len or spec.max_len
    if history_len < 1:
        raise ValueError(f"history_len must be >= 1, got {history_len}")

    # Written into a new sibling folder that replaces `out` by rename; an old package is moved aside first and
    # deleted only once the new one is in place (a crash between leaves it restorable: `recover_dir`).
    with atomic_dir(out, overwrite=overwrite, fault="package") as tmp:
        save_model(model, desc["name"], tmp)
        prepared.vocabs.save(tmp / VOCABS)
        save_file({"item_table": torch.from_numpy(prepared.item_table.astype(np.int64)),
                   "domain_table": torch.from_numpy(prepared.domain_table.astype(np.int64)),
                   **item_pool_tensors(data_dir, prepared)}, str(tmp / TABLES))
        (tmp / DOMAINS).write_text(json.dumps(domain_registry(prepared), indent=1))
        metrics = RunDir(run_dir).read_results()
        metrics.pop("history", None)
        (tmp / METRICS).write_text(json.dumps(metrics, indent=1))
        before = read_spec(data_dir).test_start  # the store never holds test-period behaviours
        n_users = HistoryStore.build(tmp / STORE, prepared, history_len, before)
        files = {name: sha256_file(tmp / name) for name in PACKAGE_FILES}
        manifest = _seal({
            "schema_version": PACKAGE_SCHEMA,
            "package_version": f"{desc['name'].replace(' ', '_')}-{_content_digest(files)[:12]}",
            "model_name": desc["name"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source_run": str(run_dir.resolve()),
            "dataset": prepared.meta.get("dataset"),
            "history_len": history_len,
            "store_users": n_users,
            "files": files,
        })
        _write_manifest(tmp, manifest)
    log(f"packaged {desc['name']} as {manifest['package_version']} ({n_users} users in the store) -> {out}")
    return out


def verify_package(path: str | Path) -> dict[str, Any]:
    """Check the manifest (every field) and every listed file's sha256; returns the manifest.

    Messages name files by their name in the package only, so an error sent to a client reveals no path.
    """
    path = Path(path)
    if not path.exists():
        with contextlib.suppress(OSError):  # best effort: a reader may lack write access
            recover_dir(path)  # an interrupted `package --overwrite`: the previous package is put back
    if not path.is_dir():
        raise PackageError(f"{path}: not a package directory")
    mpath = path / MANIFEST
    if not mpath.is_file() or mpath.is_symlink():
        raise PackageError(f"{MANIFEST}: missing from the package")
    try:
        manifest = json.loads(mpath.read_text())
        files: dict[str, str] = manifest["files"]
        schema = manifest["schema_version"]
        manifest["package_version"], manifest["checksum"], manifest["model_name"]  # noqa: B018  (presence)
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise PackageError(f"{MANIFEST}: not a valid package manifest ({e})") from e
    if schema != PACKAGE_SCHEMA:
        extra = " (its checksum does not cover every field; rebuild it with `dacdr package`)" if schema == 1 else ""
        raise PackageError(f"{MANIFEST}: package schema {schema!r}, this dacdr reads {PACKAGE_SCHEMA}{extra}")
    unsafe = [name for name in files if not _safe_name(name)]
    if unsafe:
        raise PackageError(f"{MANIFEST}: entries {unsafe!r} are not package files (only "
                           f"{', '.join((*PACKAGE_FILES, *EXPORT_FILES))}; no folders, '..' or absolute paths)")
    missing_entries = [f for f in PACKAGE_FILES if f not in files]
    if missing_entries:
        raise PackageError(f"{MANIFEST}: lists no checksum for {missing_entries}")
    if _manifest_checksum(manifest) != manifest["checksum"]:
        raise PackageError(f"{MANIFEST}: checksum does not match its fields (manifest edited)")
    for name in EXPORT_FILES:
        if name not in files and (path / name).exists():
            raise PackageError(f"{name}: present but not listed in {MANIFEST} (not written by `dacdr export` "
                               "for this package); remove it or re-export")
    for name, digest in files.items():
        f = path / name
        if f.is_symlink():
            raise PackageError(f"{name}: is a symbolic link; package files must be plain files inside the package")
        if not f.is_file():
            raise PackageError(f"{name}: missing from the package")
        if sha256_file(f) != digest:
            raise PackageError(f"{name}: sha256 differs from {MANIFEST} (file modified or corrupt)")
    for export in ("model.onnx", "model.torchscript.pt"):
        if (export in files) != (export + ".json" in files):
            raise PackageError(f"{export}: listed without its sidecar {export}.json (or the reverse)")
        if export in files:
            try:
                side = json.loads((path / (export + ".json")).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise PackageError(f"{export}.json: unreadable ({e})") from e
            if side.get("package_version") != manifest["package_version"]:
                raise PackageError(f"{export}: exported from package version {side.get('package_version')!r}, "
                                   f"this package is {manifest['package_version']!r}")
    return manifest


def add_to_package(path: str | Path, contents: dict[str, bytes]) -> dict[str, Any]:
    """Add (or replace) export files in a package and re-seal its manifest, as one unit.

    The package is re-published: its files are hard-linked (they are never modified in place) into a new
    folder with the new files and manifest, which then replaces the package by rename. Returns the manifest.
    """
    path = Path(path)
    manifest = verify_package(path)
    bad = [n for n in contents if n not in EXPORT_FILES]
    if bad:
        raise PackageError(f"cannot add {bad} to a package (only {', '.join(EXPORT_FILES)})")
    with atomic_dir(path, overwrite=True, fault="export") as tmp:
        for name in manifest["files"]:
            if name in contents:
                continue
            try:
                os.link(path / name, tmp / name)
            except OSError:
                shutil.copy2(path / name, tmp / name)
        for name, data in contents.items():
            (tmp / name).write_bytes(data)
        files = {n: manifest["files"][n] for n in manifest["files"] if n not in contents}
        files |= {n: sha256_file(tmp / n) for n in contents}
        manifest = _seal({k: v for k, v in manifest.items() if k != "checksum"} | {"files": files})
        _write_manifest(tmp, manifest)
    return manifest


def load_package(path: str | Path) -> ModelPackage:
    """Verify and load a package. Reads JSON, safetensors and SQLite only: no code is executed."""
    path = Path(path)
    manifest = verify_package(path)
    try:
        model, desc = load_model(path)
    except CheckpointError as e:
        raise PackageError(str(e).replace(f"{path}{os.sep}", "")) from e  # name files by their package name
    except Exception as e:  # noqa: BLE001  (a package must never surface as a traceback)
        raise PackageError(f"{DESCRIPTION}: cannot build the model ({type(e).__name__}: {e})") from e
    spec = model.spec
    try:
        vocabs = Vocabularies.load(path / VOCABS)
    except (json.JSONDecodeError, ValueError, AttributeError) as e:
        raise PackageError(f"{VOCABS}: unreadable ({e})") from e
    sizes = vocabs.sizes()
    bad = {f: {"model": n, "vocabs": sizes.get(f)} for f, n in spec.vocab_sizes.items() if sizes.get(f) != n}
    if bad:
        raise PackageError(f"{VOCABS}: sizes do not match {DESCRIPTION}: {bad}")
    try:
        tables = load_file(str(path / TABLES))
        item_table, domain_table = tables["item_table"].numpy(), tables["domain_table"].numpy()
    except (SafetensorError, OSError, KeyError) as e:
        raise PackageError(f"{TABLES}: unreadable ({e})") from e
    expect = {"item_table": (sizes["item"], len(spec.item_fields)),
              "domain_table": (sizes["domain"], len(spec.domain_fields))}
    for name, arr in (("item_table", item_table), ("domain_table", domain_table)):
        if arr.shape != expect[name]:
            raise PackageError(f"{TABLES}: {name} has shape {arr.shape}, {DESCRIPTION} implies {expect[name]}")
        cols = spec.item_fields if name == "item_table" else spec.domain_fields
        for j, f in enumerate(cols):
            if arr.shape[0] and (arr[:, j].min() < 0 or arr[:, j].max() >= spec.vocab_sizes[f]):
                raise PackageError(f"{TABLES}: {name} column {f!r} holds indices outside its vocabulary")
    try:
        domains = json.loads((path / DOMAINS).read_text())
        metrics = json.loads((path / METRICS).read_text())
        names = [d["domain"] for d in domains]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PackageError(f"{DOMAINS} or {METRICS}: unreadable ({e})") from e
    if sorted(names) != sorted([spec.source_domain, *spec.target_domains]):
        raise PackageError(f"{DOMAINS}: domains {names} do not match {DESCRIPTION}")
    store = HistoryStore(path / STORE)
    if store.fields != spec.sequence_fields:
        raise PackageError(f"{STORE}: fields {store.fields} differ from the model's {spec.sequence_fields}")
    pools: dict[str, np.ndarray] = {}
    if "pool_offsets" in tables:
        offsets, pool_items = tables["pool_offsets"].numpy(), tables["pool_items"].numpy()
        if (len(offsets) != sizes["domain"] + 1 or np.any(np.diff(offsets) < 0) or offsets[-1] != len(pool_items)
                or (len(pool_items) and (pool_items.min() < 0 or pool_items.max() >= sizes["item"]))):
            raise PackageError(f"{TABLES}: pool_offsets / pool_items do not describe item pools of this model")
        pools = {d["domain"]: pool_items[offsets[d["index"]]:offsets[d["index"] + 1]] for d in domains}
    return ModelPackage(path, manifest, model, desc, vocabs, item_table, domain_table, domains, metrics, store,
                        pools)


__all__ = ["OOV", "HistoryStore", "ModelPackage", "PackageError", "add_to_package", "build_package", "load_package",
           "sha256_file", "verify_package"]
