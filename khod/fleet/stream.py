"""An export file's lines fed to an Importer a chunk at a time: line by line on SQLite,
in bulk (khod.fleet.pgfast) two chunks at a time on PostgreSQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from khod.fleet.format import BadObject, check_header, parse_line
from khod.fleet.importer import Importer


@dataclass
class FileResult:
    lines: int = 0
    bad: list[str] = field(default_factory=list)
    bad_count: int = 0


CHUNK_LINES = 20_000
CHUNK_BYTES = 16 << 20


def import_stream(
    importer: Importer,
    lines: Iterable[bytes],
    name: str,
    on_progress: Callable[[int], None] | None = None,
) -> FileResult:
    """Feed one export's lines to the importer, a chunk at a time. A bad object is
    skipped and reported (the first ten, with their line numbers); a file without the
    header is refused."""
    result = FileResult()
    it = iter(lines)
    first = next(it, None)
    if first is None:
        raise BadObject(f"{name}: empty file, not a khod export")
    try:
        check_header(json.loads(first))
    except (ValueError, RecursionError):
        raise BadObject(f"{name}: not a khod export (the first line is not its header)") from None
    except BadObject as e:
        raise BadObject(f"{name}: {e}") from None
    result.lines = 1
    consumed = len(first)
    chunk: list[bytes] = []
    size = 0
    start = 2
    with _Chunks(importer, name, result) as chunks:
        for lineno, line in enumerate(it, 2):
            chunk.append(line)
            size += len(line)
            if len(chunk) >= CHUNK_LINES or size >= CHUNK_BYTES:
                chunks.submit(chunk, start)
                consumed += size
                result.lines = lineno
                if on_progress is not None:
                    on_progress(consumed)
                chunk, size, start = [], 0, lineno + 1
        if chunk:
            chunks.submit(chunk, start)
            consumed += size
            result.lines = start + len(chunk) - 1
    if on_progress is not None:
        on_progress(consumed)
    return result


_BOOT_LINE = re.compile(rb'"object"\s*:\s*"boot"')
BULK_WORKERS = 2


class _Chunks:
    """Where chunks go. SQLite: line by line, in order. PostgreSQL: in bulk, two at a
    time on two connections (the server's parsing and index upkeep are the cost, and
    they run in its backends). Chunks run together only within one phase, boots or
    the rest; a chunk holding both (the last boots and the first rows that name them)
    runs alone and is committed before the next one starts, so a row never arrives
    before or beside the chunk that inserts its boot. A chunk that falls back is
    imported line by line here."""

    def __init__(self, importer: Importer, name: str, result: FileResult) -> None:
        self.importer = importer
        self.name = name
        self.result = result
        self.pool = ThreadPoolExecutor(BULK_WORKERS) if importer.pg else None
        self.inflight: list[tuple[Future[Any], list[bytes], int]] = []
        self.phase: str | None = None  # "boots", "mixed" (runs alone) or "rest"

    def __enter__(self) -> _Chunks:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.drain()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, chunk: list[bytes], start: int) -> None:
        if self.pool is None:
            self._lines(chunk, start)
            return
        has_boots = [bool(_BOOT_LINE.search(line)) for line in chunk]
        phase = "boots" if all(has_boots) else "mixed" if any(has_boots) else "rest"
        if phase != self.phase or phase == "mixed":
            self.drain()
            self.phase = phase
        while len(self.inflight) >= BULK_WORKERS:
            self._finish(self.inflight.pop(0))
        self.inflight.append((self.pool.submit(self.importer.bulk, chunk), chunk, start))

    def drain(self) -> None:
        while self.inflight:
            self._finish(self.inflight.pop(0))

    def _finish(self, job: tuple[Future[Any], list[bytes], int]) -> None:
        future, chunk, start = job
        res = future.result()
        if res is not None:
            self.importer.apply(res)
        else:
            self._lines(chunk, start)

    def _lines(self, chunk: list[bytes], start: int) -> None:
        importer, result = self.importer, self.result
        importer.counts.line_chunks += 1
        for lineno, line in enumerate(chunk, start):
            if not line.strip():
                continue
            try:
                kind, values = parse_line(line)
            except BadObject as e:
                result.bad_count += 1
                if len(result.bad) < 10:
                    result.bad.append(f"{self.name}:{lineno}: {e}")
                continue
            importer.add(kind, values)
        importer.flush()
