"""Crash-safe file-system writes: a directory that appears as one unit, and fault injection to prove it.

`atomic_dir(dest)` yields an empty temporary sibling of `dest`; when the block ends normally its files are
flushed to disk and it replaces `dest` by rename. An existing `dest` is first renamed aside (never deleted
before the new one is in), so a crash at any instant leaves either the old directory, the new one, or the old
one under its aside name, which `recover_dir(dest)` puts back. A block that raises leaves `dest` untouched.

`atomic_file(dest)` / `write_atomic(dest, data)` do the same for one file.

`fault_point(name)` is a no-op unless the environment variable `DACDR_FAULT` names it (`name` or `name@N`,
the N-th time it is reached): then the process kills itself with SIGKILL, as a power cut or `kill -9` would,
so the tests can stop a write at each of its steps.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FAULT_ENV = "DACDR_FAULT"
_reached: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Die here (SIGKILL) when `$DACDR_FAULT` is `name` or `name@N` and this is the N-th time (tests only)."""
    want = os.environ.get(FAULT_ENV)
    if not want:
        return
    target, _, nth = want.partition("@")
    if target != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every regular file under `path`, then the directories, so a rename after it publishes whole files."""
    for root, _dirs, files in os.walk(path):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(root))


def _aside_copies(dest: Path) -> list[Path]:
    return sorted(dest.parent.glob(f".{dest.name}.old-*"), key=lambda p: p.stat().st_mtime)


def recover_dir(dest: str | Path) -> bool:
    """Undo a replacement cut short between its two renames: put the aside copy back when `dest` is missing.

    Returns whether it restored one. When `dest` exists, leftover aside copies (a crash after the swap, before
    their removal) are deleted.
    """
    dest = Path(dest)
    olds = _aside_copies(dest) if dest.parent.is_dir() else []
    if dest.exists():
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)
        return False
    if not olds:
        return False
    try:
        olds[-1].rename(dest)
    except FileNotFoundError:  # another process (a DDP rank) restored it first
        return False
    for old in olds[:-1]:
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(dest.parent)
    return True


def remove_stale_temps(dest: str | Path) -> None:
    """Delete temporary siblings left by writes of `dest` that a crash interrupted (single-writer use only)."""
    dest = Path(dest)
    for tmp in dest.parent.glob(f".{dest.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(new: Path, dest: Path, *, overwrite: bool, fault: str = "replace") -> None:
    """Rename `new` to `dest`; an existing `dest` is renamed aside first and removed only after the swap."""
    if not dest.exists():
        os.rename(new, dest)
        fsync_dir(dest.parent)
        return
    if not overwrite:
        raise FileExistsError(f"{dest} exists (pass --overwrite to replace it)")
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:12]}"
    os.rename(dest, old)
    fault_point(f"{fault}.aside")
    try:
        os.rename(new, dest)
    except BaseException:
        os.rename(old, dest)  # put the previous directory back
        raise
    fsync_dir(dest.parent)
    fault_point(f"{fault}.swapped")
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(
    dest: str | Path, *, overwrite: bool = False, fault: str = "replace", shared: bool = False
) -> Iterator[Path]:
    """Write a directory as one unit: yields a temporary sibling that replaces `dest` when the block succeeds.

    `fault` prefixes the names of the fault points of the swap (`<fault>.aside`, `<fault>.swapped`).
    `shared`: `dest` is content-addressed (a cache entry): when another process publishes it first, its copy
    is equivalent and ours is dropped instead of failing.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite and not shared:
        raise FileExistsError(f"{dest} exists (pass --overwrite to replace it)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        if shared and dest.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        try:
            replace_dir(tmp, dest, overwrite=overwrite, fault=fault)
        except OSError:
            if not (shared and dest.exists()):  # lost the race to an equivalent copy: fine
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(dest: str | Path) -> Iterator[Path]:
    """Write one file as a unit: yields a temporary sibling path that replaces `dest` when the block succeeds
    (a reader sees the old file or the new one, never a half-written one); a block that raises leaves `dest`."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(dest: str | Path, data: str | bytes) -> None:
    """`dest` holds `data` (text is UTF-8), replaced as a unit (`atomic_file`)."""
    with atomic_file(dest) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
