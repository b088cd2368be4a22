"""Streaming, bounded-memory parsing of line-oriented files (JSON lines, CSV/TSV), plain or gzip.

A file is read in blocks of whole lines (``block_bytes`` each, default 32 MiB of decompressed text). A
background thread decompresses the next block while Polars parses the current one, so gzip and parsing
overlap on two cores. Each block is parsed in one vectorised call; when that call fails (a malformed line),
the block is bisected until every bad line is isolated, so a file with a few bad lines costs a few extra
parses, never a per-line Python loop. Every rejected line is written, with its 1-based line number and the
reason, to a :class:`Rejects` file; nothing is dropped silently.
"""

from __future__ import annotations

import gzip
import io
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

DEFAULT_BLOCK_BYTES = 32 << 20
_MAX_REJECT_TEXT = 300

Parser = Callable[[bytes], pl.DataFrame]
"""Parses a block of complete lines (no blank line) into one row per line; raises on a malformed line."""


def open_text_bytes(path: str | Path) -> io.BufferedIOBase:
    """A binary stream of the file's text; ``.gz`` files (or gzip magic bytes) are decompressed."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def iter_blocks(path: str | Path, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[tuple[bytes, int]]:
    """Yield ``(block, first_line_number)``: blocks of whole lines, decompressed in a background thread."""
    q: queue.Queue = queue.Queue(maxsize=2)  # at most two blocks in flight: bounded memory
    stop = threading.Event()

    def produce() -> None:
        try:
            with open_text_bytes(path) as f:
                tail = b""
                while not stop.is_set():
                    chunk = f.read(block_bytes)
                    if not chunk:
                        break
                    data = tail + chunk
                    cut = data.rfind(b"\n")
                    if cut < 0:
                        tail = data
                        continue
                    tail = data[cut + 1 :]
                    q.put(data[: cut + 1])
                if tail and not stop.is_set():
                    q.put(tail + b"\n")
            q.put(None)
        except BaseException as e:  # surfaced in the consumer
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    line = 1
    try:
        while True:
            item = q.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            yield item, line
            line += item.count(b"\n")
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


@dataclass
class Rejects:
    """Malformed or incomplete lines, written as TSV: file, line, reason, text (truncated)."""

    path: Path | None = None
    count: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    _fh: io.TextIOBase | None = None

    def add(self, file: str, line: int, reason: str, text: bytes | str) -> None:
        self.count += 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115  (kept open across add() calls)
            self._fh.write("file\tline\treason\ttext\n")
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        text = text.rstrip("\r\n")[:_MAX_REJECT_TEXT].replace("\t", " ").replace("\n", " ")
        self._fh.write(f"{file}\t{line}\t{reason}\t{text}\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def summary(self) -> str:
        if not self.count:
            return "0 lines rejected"
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.by_reason.items(), key=lambda kv: -kv[1]))
        where = f" (see {self.path})" if self.path else ""
        return f"{self.count} lines rejected: {reasons}{where}"


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"malformed: {text[:120]}"


def _parse_bisect(
    block: bytes, lines: np.ndarray, parse: Parser, file: str, rejects: Rejects
) -> list[tuple[pl.DataFrame, np.ndarray]]:
    """Parse ``block`` whose lines have numbers ``lines``; bisect around failures."""
    try:
        return [(parse(block), lines)]
    except Exception as e:  # noqa: BLE001  (any parser error marks the block as holding a bad line)
        if len(lines) == 1:
            rejects.add(file, int(lines[0]), _reason(e), block)
            return []
    # Split at the newline nearest the middle line.
    half = len(lines) // 2
    pos = -1
    for _ in range(half):
        pos = block.index(b"\n", pos + 1)
    left, right = block[: pos + 1], block[pos + 1 :]
    return _parse_bisect(left, lines[:half], parse, file, rejects) + _parse_bisect(
        right, lines[half:], parse, file, rejects
    )


def parse_lines(
    path: str | Path,
    parse: Parser,
    rejects: Rejects,
    *,
    required: list[str],
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    skip_header: bool = False,
    post: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
) -> tuple[pl.DataFrame, int]:
    """Parse every line of ``path`` with ``parse``; return (rows with a ``line`` column, lines read).

    Rows with a null in a ``required`` column (a missing or mistyped field) are rejected with their line
    number. ``post`` transforms each block's frame (e.g. cast, rename) before the null check, so a value
    that fails a cast there is rejected too. Blank lines are skipped and not counted as rejects.
    """
    file = Path(path).name
    frames: list[pl.DataFrame] = []
    n_lines = 0
    for block, first in iter_blocks(path, block_bytes):
        count = block.count(b"\n")
        n_lines += count
        line_no = np.arange(first, first + count, dtype=np.int64)
        if skip_header and first == 1:
            nl = block.index(b"\n")
            block, line_no = block[nl + 1 :], line_no[1:]
        raw_lines: list[bytes] | None = None
        # A blank line would shift the row -> line mapping: drop blank lines first (rare, slow path).
        if b"\n\n" in block or block.startswith(b"\n") or b"\n\r\n" in block or block.startswith(b"\r\n"):
            raw_lines = block.split(b"\n")[:-1]
            keep = np.array([bool(x.strip()) for x in raw_lines], dtype=bool)
            raw_lines = [x for x, k in zip(raw_lines, keep, strict=True) if k]
            line_no = line_no[keep]
            block = b"\n".join(raw_lines) + b"\n" if raw_lines else b""
        if not block:
            continue
        for df, nums in _parse_bisect(block, line_no, parse, file, rejects):
            if df.height != len(nums):
                raise RuntimeError(f"{file}: parser returned {df.height} rows for {len(nums)} lines near line {nums[0]}")
            if post is not None:
                df = post(df)
            df = df.with_columns(pl.Series("line", nums))
            bad = df.select(pl.any_horizontal(pl.col(c).is_null() for c in required)).to_series()
            if bad.any():
                bad_rows = df.filter(bad)
                if raw_lines is None:
                    raw_lines = block.split(b"\n")
                index = {int(n): i for i, n in enumerate(line_no)}
                for row in bad_rows.iter_rows(named=True):
                    missing = [c for c in required if row[c] is None]
                    rejects.add(file, row["line"], f"missing or invalid field(s) {', '.join(missing)}",
                                raw_lines[index[row["line"]]])
                df = df.filter(~bad)
            frames.append(df)
    if not frames:
        return pl.DataFrame(), n_lines
    return pl.concat(frames, how="vertical_relaxed"), n_lines
