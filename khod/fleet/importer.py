"""Import: validated ``khod-export`` objects written into a store, in chunks.

Importing is idempotent: a row is identified by its natural key (a boot by machine
and boot id, a blob by boot, direction and name, an event by boot and fingerprint, a
pstore record by machine and content hash, an attempt by its uid) and inserted only
when the target lacks it; an attempt's verdict is filled in when the target's is
still open, and a boot's warning count raised when the target's is lower (a boot
pushed while it ran has seen more of its log since; migration 0017).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    Table,
    and_,
    bindparam,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import SQLAlchemyError

from khod.errors import StoreError
from khod.fleet.format import CONFLICT, HARD_REFS, SHAPES, TABLES, ref_key
from khod.fleet.raising import note_counts, raise_counts
from khod.store.handle import Store, describe_db_error
from khod.store.schema import boots, events, kexec_attempts

# how counts of each object type are spoken of, in this order
PLURAL = {
    "boot": "boots",
    "blob": "blobs",
    "event": "events",
    "pstore": "pstore records",
    "attempt": "attempts",
}


@dataclass
class ImportCounts:
    read: dict[str, int] = field(default_factory=dict)
    new: dict[str, int] = field(default_factory=dict)
    unknown_boot: int = 0
    # boots the store had whose warning count was raised (migration 0017)
    raised: int = 0
    # chunks written in bulk by PostgreSQL, and chunks checked line by line in Python
    bulk_chunks: int = 0
    line_chunks: int = 0

    def ordered(self, counts: dict[str, int]) -> dict[str, int]:
        return {k: counts[k] for k in PLURAL if k in counts}

    def summary(self) -> list[str]:
        """``N boots (M new, K with more warnings)``, ... for each type read."""
        return [
            f"{self.read[k]} {PLURAL[k] if self.read[k] != 1 else PLURAL[k][:-1]}"
            f" ({self.new.get(k, 0)} new"
            f"{f', {self.raised} with more warnings' if k == 'boot' and self.raised else ''})"
            for k in PLURAL
            if self.read.get(k)
        ]


BootKey = tuple[str, str]

# an attempt already in the store gets a verdict only while its own is open
_FILL_VERDICT_SQLITE = (
    "DO UPDATE SET verdict = excluded.verdict, verdict_boot = excluded.verdict_boot, "
    "verdict_detail = excluded.verdict_detail "
    "WHERE kexec_attempts.verdict IS NULL AND excluded.verdict IS NOT NULL"
)


def _refused_event(kind: str, message: str) -> dict[str, Any]:
    """An event of no boot: the refused object may name none this store knows."""
    from khod.observation import Event, Severity  # noqa: PLC0415
    from khod.records import EventSource  # noqa: PLC0415
    from khod.store.boots import event_values  # noqa: PLC0415

    e = Event(kind, kind.partition("-")[0], Severity.WARNING, message, origin=EventSource.STORE)
    return event_values(None, e, time.time())


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
        raise_warnings: bool = True,
    ) -> None:
        self.store = store
        # may a boot the store has get a higher warning count? (a fleet database older
        # than 0017 lets a host role insert boots, not update them: khod.fleet.compat)
        self.raise_warnings = raise_warnings
        self.chunk_rows = chunk_rows
        self.chunk_bytes = chunk_bytes
        self.cache_size = cache_size
        self.pending: dict[str, list[dict[str, Any]]] = {k: [] for k in TABLES}
        self.n_pending = 0
        self.bytes_pending = 0
        self.boot_ids: dict[BootKey, int] = {}
        self.counts = ImportCounts()
        self.pg = store.url.get_backend_name() == "postgresql"
        # may this role make the temporary table COPY stages rows in? (a fleet host may
        # not: `khoctl fleet init` takes TEMP away from everyone but the owner)
        self.can_stage: bool | None = None
        # boots the store had, their highest warning count given: raised after the
        # transaction that inserted the others
        self.to_raise: dict[tuple[str, str], int] = {}

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
            self.to_raise.clear()  # (their chunk goes again, or the import stops)
            raise StoreError(
                f"cannot write to database {self.store.location}: {describe_db_error(e)}"
            ) from None
        for rows in self.pending.values():
            rows.clear()
        self.n_pending = 0
        self.bytes_pending = 0
        if len(self.boot_ids) > self.cache_size:
            self.boot_ids.clear()
        most, self.to_raise = self.to_raise, {}
        if most:  # the inserts committed: nothing of them is lost if this fails
            try:
                with self.store.writer.begin() as conn:
                    self.counts.raised += raise_counts(conn, self.pg, most)
            except SQLAlchemyError as e:
                raise StoreError(
                    f"cannot raise boots' warning counts in {self.store.location}: "
                    f"{describe_db_error(e)}"
                ) from None

    def record_refused(self, kind: str, lines: list[str], more: int = 0) -> None:
        """Each refused object (``lines``, one line each, naming where and which field)
        as an event of ``kind`` (``import-refused``, ``sync-refused``), and one for the
        ``more`` not named; best effort: the warnings on stderr say it already."""
        if not lines and not more:
            return
        rows = [_refused_event(kind, line) for line in lines]
        if more:
            rows.append(_refused_event(kind, f"{more} more objects refused"))
        try:
            with self.store.writer.begin() as conn:
                # once each: the same row refused again (an open attempt is sent at
                # every sync) is not a new event (NULL boots escape the unique key)
                have = set(
                    conn.execute(
                        select(events.c.fingerprint).where(
                            events.c.boot_pk.is_(None),
                            events.c.fingerprint.in_([r["fingerprint"] for r in rows]),
                        )
                    ).scalars()
                )
                rows = [r for r in rows if r["fingerprint"] not in have]
                if rows:
                    conn.execute(insert(events), rows)
        except SQLAlchemyError:
            pass

    def bulk(self, lines: list[bytes]) -> Any:
        """PostgreSQL: the whole chunk in SQL (khod.fleet.pgfast), in a transaction of
        its own (and the raise of boots it had, in another); None when it needs the
        line-by-line path (nothing of it was written, or a raise failed).
        Safe to run in a worker thread: it touches no state of the importer."""
        from psycopg import Error as PgError  # noqa: PLC0415

        from khod.fleet import pgfast  # noqa: PLC0415

        if not self.raise_warnings:  # pgfast finds boots to raise: this importer may not
            return None
        try:
            with self.store.writer.begin() as conn:
                res = pgfast.load_chunk(conn, lines)
            if res.to_raise:  # the chunk committed: a transaction of its own
                with self.store.writer.begin() as conn:
                    res.raised = raise_counts(conn, self.pg, res.to_raise)
            return res
        except (pgfast.Fallback, PgError, SQLAlchemyError):
            # (a failed raise after its chunk committed: the line path, rows known
            # and skipped, raises them again and says so if it fails too)
            return None

    def apply(self, res: Any) -> None:
        """Count what a bulk chunk wrote."""
        for k, n in res.read.items():
            self.counts.read[k] = self.counts.read.get(k, 0) + n
        for k, n in res.new.items():
            self.counts.new[k] = self.counts.new.get(k, 0) + n
        self.counts.unknown_boot += res.unknown_boot
        self.counts.raised += res.raised
        self.counts.bulk_chunks += 1

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
        if self.pg and len(rows) >= 200 and self._may_stage(conn):
            n = self._pg_copy(conn, table, rows, CONFLICT[kind])
        elif not self.pg:
            n = self._sqlite_many(conn, table, rows, CONFLICT[kind])
        else:
            ins = (
                pg_insert(table)
                .on_conflict_do_nothing(index_elements=list(CONFLICT[kind]))
                .returning(table.c.id)  # the rows inserted: executemany's rowcount is not kept
            )
            n = len(conn.execute(ins, rows).all())
        if kind == "boot" and self.raise_warnings and n < len(rows):
            # some were there: raised once this transaction committed (the new equal)
            note_counts(self.to_raise, rows)
        return n

    def _may_stage(self, conn: Connection) -> bool:
        if self.can_stage is None:
            q = text("SELECT has_database_privilege(current_database(), 'TEMP')")
            self.can_stage = bool(conn.execute(q).scalar())
        return self.can_stage

    def _sqlite_many(
        self,
        conn: Connection,
        table: Table,
        rows: list[dict[str, Any]],
        conflict: tuple[str, ...],
        action: str = "DO NOTHING",
    ) -> int:
        """SQLite: one prepared INSERT ... ON CONFLICT DO NOTHING (or ``action``),
        executemany on the driver; the connection's change counter says how many rows
        were new (or changed)."""
        cols = [c for c in table.c if c.name != "id"]
        names = ", ".join(f'"{c.name}"' for c in cols)
        marks = ", ".join("?" * len(cols))
        json_cols = [isinstance(c.type, JSON) for c in cols]
        raw = conn.connection.driver_connection
        assert raw is not None
        before = raw.total_changes
        raw.executemany(
            f"INSERT INTO {table.name} ({names}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(conflict)}) {action}",
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
        """New attempts inserted (the first of a uid given twice); an attempt that was
        open when first copied gets its verdict later, once. The count inserted."""
        t = kexec_attempts
        first: dict[str, dict[str, Any]] = {}
        for r in rows:
            first.setdefault(r["uid"], r)
        uids = list(first)
        have: set[str] = set()
        for i in range(0, len(uids), 500):
            q = select(t.c.uid).where(t.c.uid.in_(uids[i : i + 500]))
            have.update(conn.execute(q).scalars())
        new = [r for u, r in first.items() if u not in have]
        if not self.pg:
            # one prepared upsert over the chunk: its DO UPDATE fills open verdicts
            self._sqlite_many(conn, t, list(first.values()), ("uid",), _FILL_VERDICT_SQLITE)
            return len(new)
        if new:
            ins = pg_insert(t).on_conflict_do_nothing(index_elements=["uid"])
            conn.execute(ins, new)
        judged = [r for u, r in first.items() if u in have and r["verdict"] is not None]
        if judged:
            # a host may update its own open attempts' verdicts, nothing else
            fill = (
                update(t)
                .where(and_(t.c.uid == bindparam("u"), t.c.verdict.is_(None)))
                .values(
                    verdict=bindparam("v"),
                    verdict_boot=bindparam("vb"),
                    verdict_detail=bindparam("vd"),
                )
            )
            conn.execute(
                fill,
                [
                    {
                        "u": r["uid"],
                        "v": r["verdict"],
                        "vb": r["verdict_boot"],
                        "vd": r["verdict_detail"],
                    }
                    for r in judged
                ],
            )
        return len(new)

    def _pg_copy(
        self,
        conn: Connection,
        table: Table,
        rows: list[dict[str, Any]],
        conflict: tuple[str, ...],
    ) -> int:
        """PostgreSQL: COPY into a temporary table, then one INSERT ... SELECT ... ON
        CONFLICT DO NOTHING: an order of magnitude faster than row-wise inserts. The
        count inserted."""
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
