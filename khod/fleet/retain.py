"""``khoctl fleet retain --max-age D``: the fleet database keeps what the owner says.

Per machine, in the order its boots were recorded (never by the wall clock alone), a
boot's age is the latest boot time recorded up to it, as the host's own retention
measures it (khod.store.retention): a boot recorded with a clock set back is as old as
the boot before it. A boot whose time is ahead of the database's clock is kept and
gives no age to the boots after it: a host's clock years ahead keeps that boot only,
not every boot after it; a database clock set back deletes nothing that booted after
it. Each machine's newest boot is always kept (what the fleet last heard of it). The
boots older than the cutoff go with everything hanging off them (blobs, events, the
pstore records their ingests found, the kexec attempts made from them); a pstore record
or attempt of a kept boot that named one of them keeps its row, the name forgotten
(``SET NULL``), as the foreign keys say.

The doomed boots are found in one query that reads only the machines with a boot older
than the cutoff (``ix_boots_booted_at``), and deleted in batches, each a transaction of
its own in (machine, id) order, so a host's push waits at most one batch; the rollup
triggers take each deleted boot out of the report as any delete does. A batch that
PostgreSQL aborts for a deadlock with a push is tried again.

The clock is the database server's (PostgreSQL's ``clock_timestamp()``; SQLite's is
this machine's). When nothing in the fleet booted within ``max_age`` of it, the clock
or the hosts are suspect and nothing is deleted without ``--force``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from khod.errors import StoreError
from khod.store.handle import Store, describe_db_error

BATCH = 5000  # boots a transaction deletes
PARAMS = 10000  # ids one statement names
RETRIES = 3  # a batch aborted for a deadlock or a serialization failure
_RETRYABLE = {"40P01", "40001"}  # deadlock_detected, serialization_failure

# every boot of the machines with one older than the cutoff, its age the running
# maximum of the times up to it (those ahead of the clock left out), its rank from the
# machine's newest; a boot ahead of the clock itself stays
DOOMED_SQL = """
WITH m AS (SELECT DISTINCT machine_id FROM boots WHERE booted_at < :cutoff),
aged AS (
  SELECT b.id, b.machine_id, b.booted_at,
         max(CASE WHEN b.booted_at <= :now THEN b.booted_at END) OVER (
           PARTITION BY b.machine_id ORDER BY coalesce(b.seq, 0), b.id
           ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS age,
         row_number() OVER (
           PARTITION BY b.machine_id ORDER BY coalesce(b.seq, 0) DESC, b.id DESC) AS from_newest
  FROM boots b WHERE b.machine_id IN (SELECT machine_id FROM m))
SELECT id, machine_id FROM aged
WHERE from_newest > 1 AND age < :cutoff AND (booted_at IS NULL OR booted_at <= :now)
ORDER BY machine_id, id
"""
NEWEST_SQL = "SELECT max(booted_at) FROM boots WHERE booted_at <= :now"
# what hangs off a boot, deleted before it so that each is counted (the foreign keys'
# CASCADE would delete the same rows)
CHILDREN = (
    ("blobs", "boot_pk"),
    ("events", "boot_pk"),
    ("pstore_records", "collected_by"),
    ("kexec_attempts", "from_boot"),
)
TABLES = (*(t for t, _ in CHILDREN), "boots")


@dataclass
class Outcome:
    now: float
    cutoff: float
    planned: int = 0  # boots found to go
    machines: int = 0
    batches: int = 0
    retried: int = 0
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))


class Refused(StoreError):
    """Nothing deleted: the clock is suspect (``--force`` overrides)."""


def server_now(conn: Connection) -> float:
    if conn.dialect.name == "postgresql":
        return float(
            conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one()
        )
    return time.time()


# who may delete: the tables' owner (row-level security does not apply to it); any other
# role would see no rows of the policies' tables and "delete" none, silently
MAY_DELETE_SQL = """
SELECT current_user, row_security_active('boots'),
       bool_and(has_table_privilege(t, 'DELETE')) FROM unnest(CAST(:tables AS text[])) t
"""


def may_delete(conn: Connection, location: str) -> None:
    if conn.dialect.name != "postgresql":
        return
    who, rls, grants = conn.execute(text(MAY_DELETE_SQL), {"tables": list(TABLES)}).one()
    if rls or not grants:
        why = "its rows are filtered by row-level security" if rls else "no DELETE grant"
        raise StoreError(
            f"fleet retain: role {who} may not delete from {location} ({why}): run it with "
            "the fleet database's owner role"
        )


def doomed(conn: Connection, now: float, cutoff: float) -> list[tuple[int, str]]:
    rows = conn.execute(text(DOOMED_SQL), {"now": now, "cutoff": cutoff})
    return [(int(i), str(m)) for i, m in rows]


def _count(conn: Connection, table: str, column: str, ids: Sequence[int]) -> int:
    q = text(f"SELECT count(*) FROM {table} WHERE {column} IN :ids").bindparams(
        bindparam("ids", expanding=True)
    )
    return int(conn.execute(q, {"ids": list(ids)}).scalar_one())


def _delete(conn: Connection, table: str, column: str, ids: Sequence[int]) -> int:
    q = text(f"DELETE FROM {table} WHERE {column} IN :ids").bindparams(
        bindparam("ids", expanding=True)
    )
    return int(conn.execute(q, {"ids": list(ids)}).rowcount)


def _batch(store: Store, ids: Sequence[int], *, dry_run: bool) -> dict[str, int]:
    """One transaction: the batch's rows, each statement naming at most ``PARAMS`` ids
    (PostgreSQL's protocol takes 65,535 parameters a statement)."""
    act = _count if dry_run else _delete
    parts = [ids[i : i + PARAMS] for i in range(0, len(ids), PARAMS)]
    got = dict.fromkeys(TABLES, 0)
    with store.writer.begin() as conn:
        for table, column in (*CHILDREN, ("boots", "id")):
            for part in parts:
                got[table] += act(conn, table, column, part)
    return got


def retain(
    store: Store,
    max_age: int,
    *,
    force: bool = False,
    dry_run: bool = False,
    batch: int = BATCH,
    progress: Callable[[Outcome], None] | None = None,
) -> Outcome:
    """Delete (or, ``dry_run``, count) the boots older than ``max_age`` seconds by the
    rule above. Raises :class:`Refused` when the fleet's newest boot is older than
    ``max_age`` by the database's clock, unless ``force``; a database error is one line."""
    out: Outcome | None = None
    try:
        with store.engine.connect() as conn:
            may_delete(conn, store.location)
            now = server_now(conn)
            cutoff = now - max_age
            newest = conn.execute(text(NEWEST_SQL), {"now": now}).scalar()
            if newest is not None and float(newest) < cutoff and not force:
                days = int((now - float(newest)) // 86400)
                raise Refused(
                    f"fleet retain: the newest boot in {store.location} is {days} days older "
                    "than the database's clock, more than --max-age: nothing deleted (is "
                    "that clock right? --force deletes by it)"
                )
            plan = doomed(conn, now, cutoff)
        out = Outcome(now=now, cutoff=cutoff, planned=len(plan), machines=len({m for _, m in plan}))
        for start in range(0, len(plan), batch):
            ids = [i for i, _ in plan[start : start + batch]]
            for attempt in range(RETRIES + 1):
                try:
                    got = _batch(store, ids, dry_run=dry_run)
                    break
                except DBAPIError as e:
                    code = getattr(e.orig, "pgcode", None) or getattr(e.orig, "sqlstate", None)
                    if code not in _RETRYABLE or attempt == RETRIES:
                        raise
                    out.retried += 1
            for t, n in got.items():
                out.deleted[t] += n
            out.batches += 1
            if progress is not None:
                progress(out)
        return out
    except SQLAlchemyError as e:
        done = ""
        if out is not None and out.batches:
            done = (
                f" (after {out.deleted['boots']} boots deleted in {out.batches} batches, "
                "which stay deleted)"
            )
        raise StoreError(
            f"fleet retain: cannot delete from {store.location}: {describe_db_error(e)}{done}"
        ) from None
