"""Moving records between stores: export to JSON Lines, import from it, and sync
(store-and-forward from a host's SQLite to the fleet database).

The ``khod-export`` format, version 1 (README, "Export format"): one JSON object per
line. The first is a header ``{"object": "header", "format": "khod-export",
"version": 1, ...}``; then objects ``boot``, ``blob``, ``event``, ``pstore``
and ``attempt``, boots first. Their keys are the store's column names. A row that
hangs off a boot names it by ``(machine_id, boot_id)``, never by a database id, so
the same object means the same thing in every store; binary columns are base64.

Importing is idempotent: a row is identified by its natural key (a boot by machine
and boot id, a blob by boot, direction and name, an event by boot and fingerprint, a
pstore record by machine and content hash, an attempt by its uid) and inserted only
when the target lacks it; an attempt's verdict is filled in when the target's is
still open. Sync is the same import fed from the local store's rows past a watermark.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Connection,
    Float,
    Integer,
    LargeBinary,
    String,
    Table,
    and_,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from khod import __version__
from khod.errors import KhodError, StoreError
from khod.store.db import Store, describe_db_error
from khod.store.schema import blobs, boots, events, kexec_attempts, pstore_records, sync_state

FORMAT = "khod-export"
VERSION = 1

# type -> (table, columns of the table that are boot references, exported as boot ids)
TABLES: dict[str, tuple[Table, tuple[str, ...]]] = {
    "boot": (boots, ()),
    "blob": (blobs, ("boot_pk",)),
    "event": (events, ("boot_pk",)),
    "pstore": (pstore_records, ("collected_by", "describes")),
    "attempt": (kexec_attempts, ("from_boot", "verdict_boot")),
}
# in an export object, a boot reference is named by the boot id under this key
REF_KEY = {"boot_pk": "boot_id"}
# a row whose boot is unknown to the target is skipped (counted in unknown_boot); the
# other references (the boot a record describes, the boot that judged an attempt)
# become NULL when unknown
HARD_REFS = frozenset({"boot_pk", "collected_by", "from_boot"})
CONFLICT = {
    "boot": ("machine_id", "boot_id"),
    "blob": ("boot_pk", "direction", "name"),
    "event": ("boot_pk", "fingerprint"),
    "pstore": ("machine_id", "sha256"),
    "attempt": ("uid",),
}
INT32 = 2**31
INT64 = 2**63


class BadObject(KhodError):
    """One object of an import could not be used."""


def ref_key(column: str) -> str:
    return REF_KEY.get(column, column)


# --- export -----------------------------------------------------------------


def header(since: float | None = None) -> dict[str, Any]:
    return {
        "object": "header",
        "format": FORMAT,
        "version": VERSION,
        "khod_version": __version__,
        "exported_at": time.time(),
        "since": since,
    }


def _columns(table: Table, kind: str) -> list[str]:
    refs = TABLES[kind][1]
    return [c.name for c in table.columns if c.name != "id" and c.name not in refs]


def _select(kind: str, since: float | None, after_id: int, min_id: int | None = None) -> Any:
    """Rows of one type as export objects' columns, ordered by id."""
    table, refs = TABLES[kind]
    cols = [table.c[n] for n in _columns(table, kind)]
    q = select(table.c.id, *cols)
    joined: Any = table
    owner = None
    for i, ref in enumerate(refs):
        alias = boots.alias(f"r{i}")
        joined = joined.outerjoin(alias, alias.c.id == table.c[ref])
        q = q.add_columns(alias.c.boot_id.label(ref_key(ref)))
        if i == 0:
            owner = alias
    if kind == "boot":
        owner = boots
    elif "machine_id" not in table.c and owner is not None:
        q = q.add_columns(owner.c.machine_id.label("machine_id"))
    q = q.select_from(joined).where(table.c.id > after_id).order_by(table.c.id)
    if min_id is not None:
        q = q.where(table.c.id >= min_id)
    if since is not None and owner is not None:
        q = q.where(func.coalesce(owner.c.booted_at, owner.c.ingested_at) >= since)
    return q


def _to_object(kind: str, row: Mapping[Any, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = {"object": kind}
    for k, v in row.items():
        if k == "id":
            continue
        if isinstance(v, (bytes, memoryview)):
            obj[k] = base64.b64encode(bytes(v)).decode("ascii")
        else:
            obj[k] = v
    return obj


def iter_objects(
    store: Store,
    kind: str,
    *,
    since: float | None = None,
    after_id: int = 0,
    min_id: int | None = None,
    with_ids: bool = False,
) -> Iterator[dict[str, Any]]:
    """Stream one type's rows as export objects (``with_ids`` adds ``_id``, the local
    row id, for sync's watermarks)."""
    q = _select(kind, since, after_id, min_id)
    with store.engine.connect() as conn:
        result = conn.execution_options(yield_per=2000).execute(q).mappings()
        for row in result:
            obj = _to_object(kind, row)
            if with_ids:
                obj["_id"] = row["id"]
            yield obj


def export(store: Store, out: io.TextIOBase | Any, since: float | None = None) -> dict[str, int]:
    """Write the whole store (boots booted since ``since``, and what hangs off them)."""
    counts: dict[str, int] = {}
    out.write(json.dumps(header(since)) + "\n")
    for kind in TABLES:
        n = 0
        for obj in iter_objects(store, kind, since=since):
            out.write(json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")))
            out.write("\n")
            n += 1
        counts[kind] = n
    return counts


# --- validation ---------------------------------------------------------------


Check = Callable[[Any], Any]


def _checker(col: Any, name: str) -> Check:
    t = col.type

    def bad(why: str) -> BadObject:
        return BadObject(f"{name}: {why}")

    if isinstance(t, Boolean):

        def check(v: Any) -> Any:
            if not isinstance(v, bool):
                raise bad("expected true or false")
            return v

    elif isinstance(t, Integer):  # BigInteger is an Integer
        limit = INT64 if isinstance(t, BigInteger) else INT32

        def check(v: Any) -> Any:
            # JSON has one number type: 3, 3.0 and 3e0 are the same integer
            if isinstance(v, float) and v.is_integer() and abs(v) < 2**64:
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad("expected an integer")
            if not -limit <= v < limit:
                raise bad("integer out of range")
            return v

    elif isinstance(t, Float):

        def check(v: Any) -> Any:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad("expected a number")
            return float(v)

    elif isinstance(t, JSON):

        def check(v: Any) -> Any:
            if not isinstance(v, (list, dict)):
                raise bad("expected a JSON array or object")
            return v

    elif isinstance(t, LargeBinary):

        def check(v: Any) -> Any:
            if not isinstance(v, str):
                raise bad("expected base64")
            try:
                return base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raise bad("not valid base64") from None

    else:  # String, Text, KText
        length = t.length if isinstance(t, String) else None

        def check(v: Any) -> Any:
            if not isinstance(v, str):
                raise bad("expected a string")
            if "\x00" in v:
                v = v.replace("\x00", "\\x00")
            if length is not None and len(v) > length:
                raise bad(f"longer than {length} characters")
            return v

    return check


@dataclass
class _Shape:
    kind: str
    table: Table
    checks: dict[str, Check]
    required: frozenset[str]
    refs: tuple[str, ...]
    columns: dict[str, Any]  # key -> the column its value goes to (or is checked as)


def _shape(kind: str) -> _Shape:
    table, refs = TABLES[kind]
    columns: dict[str, Any] = {}
    required = set()
    for col in table.columns:
        if col.name == "id" or col.name in refs:
            continue
        columns[col.name] = col
        if not col.nullable:
            required.add(col.name)
    if "machine_id" not in columns:
        columns["machine_id"] = boots.c.machine_id
        required.add("machine_id")
    for ref in refs:
        columns[ref_key(ref)] = boots.c.boot_id
        if ref in HARD_REFS:
            required.add(ref_key(ref))
    checks = {key: _checker(col, key) for key, col in columns.items()}
    return _Shape(kind, table, checks, frozenset(required), refs, columns)


SHAPES = {kind: _shape(kind) for kind in TABLES}


def validate(obj: Any) -> tuple[str, dict[str, Any]]:
    """The type and the checked values of one export object."""
    if not isinstance(obj, dict):
        raise BadObject("not a JSON object")
    kind = obj.get("object")
    if kind not in SHAPES:
        raise BadObject(f"unknown object {kind!r}")
    shape = SHAPES[kind]
    missing = shape.required - obj.keys()
    if missing:
        raise BadObject(f"{kind}: missing {', '.join(sorted(missing))}")
    values: dict[str, Any] = {}
    for key, check in shape.checks.items():
        v = obj.get(key)
        values[key] = None if v is None else check(v)
        if v is None and key in shape.required:
            raise BadObject(f"{kind}: {key} is null")
    return kind, values


def parse_line(line: bytes | str) -> tuple[str, dict[str, Any]]:
    """One export line: its type and checked values, or BadObject."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise BadObject("not JSON") from None
    return validate(obj)


def check_header(obj: Any) -> None:
    if not isinstance(obj, dict) or obj.get("object") != "header" or obj.get("format") != FORMAT:
        raise BadObject("not a khod export (the first line is not its header)")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BadObject("the header has no version")
    if version > VERSION:
        raise BadObject(
            f"export format version {version} is newer than this khod reads ({VERSION})"
        )


# --- import -------------------------------------------------------------------


@dataclass
class ImportCounts:
    read: dict[str, int] = field(default_factory=dict)
    new: dict[str, int] = field(default_factory=dict)
    unknown_boot: int = 0
    # chunks written in bulk by PostgreSQL, and chunks checked line by line in Python
    bulk_chunks: int = 0
    line_chunks: int = 0


BootKey = tuple[str, str]


class Importer:
    """Collects validated objects and writes them in chunks, boots first.

    Memory stays bounded: a chunk is written when it holds ``chunk_rows`` objects or
    ``chunk_bytes`` of binary data, and the boot id cache is cleared when it grows
    past ``cache_size``.
    """

    def __init__(
        self,
        store: Store,
        chunk_rows: int = 20_000,
        chunk_bytes: int = 64 << 20,
        cache_size: int = 100_000,
    ) -> None:
        self.store = store
        self.chunk_rows = chunk_rows
        self.chunk_bytes = chunk_bytes
        self.cache_size = cache_size
        self.pending: dict[str, list[dict[str, Any]]] = {k: [] for k in TABLES}
        self.n_pending = 0
        self.bytes_pending = 0
        self.boot_ids: dict[BootKey, int] = {}
        self.counts = ImportCounts()
        self.pg = store.url.get_backend_name() == "postgresql"

    def add(self, kind: str, values: dict[str, Any]) -> None:
        self.pending[kind].append(values)
        self.counts.read[kind] = self.counts.read.get(kind, 0) + 1
        self.n_pending += 1
        for v in values.values():
            if isinstance(v, bytes):
                self.bytes_pending += len(v)
        if self.n_pending >= self.chunk_rows or self.bytes_pending >= self.chunk_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.n_pending:
            return
        try:
            with self.store.writer.begin() as conn:
                for kind in TABLES:
                    rows = self.pending[kind]
                    if rows:
                        new = self._write(conn, kind, rows)
                        self.counts.new[kind] = self.counts.new.get(kind, 0) + new
        except SQLAlchemyError as e:
            self.boot_ids.clear()  # ids cached in the failed transaction may be gone
            raise StoreError(
                f"cannot write to database {self.store.location}: {describe_db_error(e)}"
            ) from None
        for rows in self.pending.values():
            rows.clear()
        self.n_pending = 0
        self.bytes_pending = 0
        if len(self.boot_ids) > self.cache_size:
            self.boot_ids.clear()

    def bulk(self, lines: list[bytes]) -> Any:
        """PostgreSQL: the whole chunk in SQL (khod.store.pgfast), in a transaction of
        its own; None when it needs the line-by-line path (nothing of it was written).
        Safe to run in a worker thread: it touches no state of the importer."""
        from psycopg import Error as PgError  # noqa: PLC0415

        from khod.store import pgfast  # noqa: PLC0415

        try:
            with self.store.writer.begin() as conn:
                return pgfast.load_chunk(conn, lines)
        except (pgfast.Fallback, PgError, SQLAlchemyError):
            return None

    def apply(self, res: Any) -> None:
        """Count what a bulk chunk wrote; its attempts (few) go through the upsert."""
        for k, n in res.read.items():
            if k != "attempt":
                self.counts.read[k] = self.counts.read.get(k, 0) + n
        for k, n in res.new.items():
            self.counts.new[k] = self.counts.new.get(k, 0) + n
        self.counts.unknown_boot += res.unknown_boot
        self.counts.bulk_chunks += 1
        for text_ in res.attempts:
            kind, values = parse_line(text_)
            self.add(kind, values)
        self.flush()

    # boot references -> ids in the target

    def _resolve(self, conn: Connection, keys: Iterable[BootKey]) -> None:
        unknown = list({k for k in keys if k not in self.boot_ids})
        for i in range(0, len(unknown), 400):
            part = unknown[i : i + 400]
            q = select(boots.c.machine_id, boots.c.boot_id, boots.c.id).where(
                tuple_(boots.c.machine_id, boots.c.boot_id).in_(part)
            )
            for m, b, pk in conn.execute(q):
                self.boot_ids[(m, b)] = pk

    def _write(self, conn: Connection, kind: str, rows: list[dict[str, Any]]) -> int:
        shape = SHAPES[kind]
        table = shape.table
        if shape.refs:
            self._resolve(
                conn,
                (
                    (r["machine_id"], r[ref_key(ref)])
                    for r in rows
                    for ref in shape.refs
                    if r[ref_key(ref)] is not None
                ),
            )
            out = []
            for r in rows:
                values = {k: v for k, v in r.items() if k in table.c}
                ok = True
                for ref in shape.refs:
                    boot_id = r[ref_key(ref)]
                    pk = None if boot_id is None else self.boot_ids.get((r["machine_id"], boot_id))
                    if pk is None and ref in HARD_REFS:
                        ok = False
                    values[ref] = pk
                if ok:
                    out.append(values)
                else:
                    self.counts.unknown_boot += 1
            rows = out
            if not rows:
                return 0
        if kind == "attempt":
            return self._upsert_attempts(conn, rows)
        if self.pg and len(rows) >= 200:
            return self._pg_copy(conn, table, rows, CONFLICT[kind])
        if not self.pg:
            return self._sqlite_many(conn, table, rows, CONFLICT[kind])
        ins = (
            (pg_insert if self.pg else sqlite_insert)(table)
            .on_conflict_do_nothing(index_elements=list(CONFLICT[kind]))
            .returning(table.c.id)  # the rows inserted: executemany's rowcount is not kept
        )
        return len(conn.execute(ins, rows).all())

    def _sqlite_many(
        self, conn: Connection, table: Table, rows: list[dict[str, Any]], conflict: tuple[str, ...]
    ) -> int:
        """SQLite: one prepared INSERT ... ON CONFLICT DO NOTHING, executemany on the
        driver; the connection's change counter says how many rows were new."""
        cols = [c for c in table.c if c.name != "id"]
        names = ", ".join(f'"{c.name}"' for c in cols)
        marks = ", ".join("?" * len(cols))
        json_cols = [isinstance(c.type, JSON) for c in cols]
        raw = conn.connection.driver_connection
        assert raw is not None
        before = raw.total_changes
        raw.executemany(
            f"INSERT INTO {table.name} ({names}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(conflict)}) DO NOTHING",
            [
                [
                    json.dumps(r.get(c.name)) if is_json else r.get(c.name)
                    for c, is_json in zip(cols, json_cols, strict=True)
                ]
                for r in rows
            ],
        )
        return int(raw.total_changes - before)

    def _upsert_attempts(self, conn: Connection, rows: list[dict[str, Any]]) -> int:
        t = kexec_attempts
        uids = [r["uid"] for r in rows]
        have = set(conn.execute(select(t.c.uid).where(t.c.uid.in_(uids))).scalars())
        new = [r for r in rows if r["uid"] not in have]
        if new:
            ins = (pg_insert if self.pg else sqlite_insert)(t).on_conflict_do_nothing(
                index_elements=["uid"]
            )
            conn.execute(ins, new)
        # an attempt that was open when first copied gets its verdict later
        for r in rows:
            if r["uid"] in have and r["verdict"] is not None:
                conn.execute(
                    update(t)
                    .where(and_(t.c.uid == r["uid"], t.c.verdict.is_(None)))
                    .values(
                        verdict=r["verdict"],
                        verdict_boot=r["verdict_boot"],
                        verdict_detail=r["verdict_detail"],
                    )
                )
        return len(new)

    def _pg_copy(
        self, conn: Connection, table: Table, rows: list[dict[str, Any]], conflict: tuple[str, ...]
    ) -> int:
        """PostgreSQL: COPY into a temporary table, then one INSERT ... SELECT ... ON
        CONFLICT DO NOTHING: an order of magnitude faster than row-wise inserts."""
        cols = [c for c in table.c if c.name != "id"]
        names = ", ".join(f'"{c.name}"' for c in cols)
        stage = f"khod_stage_{table.name}"
        json_cols = [isinstance(c.type, JSON) for c in cols]
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cur:
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
                f"SELECT {names} FROM {table.name} WITH NO DATA"
            )
            with cur.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(
                        [
                            json.dumps(r.get(c.name)) if is_json else r.get(c.name)
                            for c, is_json in zip(cols, json_cols, strict=True)
                        ]
                    )
            cur.execute(
                f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {stage} "
                f"ON CONFLICT ({', '.join(conflict)}) DO NOTHING"
            )
            n: int = cur.rowcount
            cur.execute(f"TRUNCATE {stage}")
        return max(n, 0)


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


# --- sync ---------------------------------------------------------------------


@dataclass
class SyncResult:
    target: str
    counts: ImportCounts
    watermarks: dict[str, int]


def _watermarks(local: Store, target: str) -> dict[str, int]:
    with local.engine.connect() as conn:
        rows = conn.execute(
            select(sync_state.c.kind, sync_state.c.last_id).where(sync_state.c.target == target)
        ).all()
    return {k: v for k, v in rows}


def sync(local: Store, target: Store, *, full: bool = False) -> SyncResult:
    """Push the local rows the target has not had yet. Watermarks (the last local row
    id sent, per type) advance only after the target committed, so a failure at any
    point sends the same rows again next time, and the import ignores what it has."""
    name = target.location
    marks = {} if full else _watermarks(local, name)
    importer = Importer(target)
    new_marks: dict[str, int] = {}
    for kind in TABLES:
        last = marks.get(kind, 0)
        top = last
        if kind == "attempt":
            # attempts change once (their verdict): resend from the oldest one that was
            # still open last time
            objs = iter_objects(local, kind, after_id=0, min_id=last or None, with_ids=True)
        else:
            objs = iter_objects(local, kind, after_id=last, with_ids=True)
        open_min = None
        for obj in objs:
            rid = obj.pop("_id")
            top = max(top, rid)
            if kind == "attempt" and obj["verdict"] is None and open_min is None:
                open_min = rid
            obj.pop("object")
            _, values = validate({"object": kind, **obj})
            importer.add(kind, values)
        importer.flush()
        new_marks[kind] = (
            open_min if open_min is not None else top + 1 if kind == "attempt" else top
        )
    _save_watermarks(local, name, new_marks)
    return SyncResult(name, importer.counts, new_marks)


def _save_watermarks(local: Store, target: str, marks: dict[str, int]) -> None:
    now = time.time()
    try:
        with local.writer.begin() as conn:
            for kind, last in marks.items():
                ins = sqlite_insert if local.url.get_backend_name() == "sqlite" else pg_insert
                stmt = ins(sync_state).values(target=target, kind=kind, last_id=last, synced_at=now)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["target", "kind"],
                        set_={"last_id": last, "synced_at": now},
                    )
                )
    except SQLAlchemyError as e:
        raise StoreError(
            f"cannot record sync progress in {local.location}: {describe_db_error(e)}"
        ) from None
