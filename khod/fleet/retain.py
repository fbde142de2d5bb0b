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
its own, cut from the (machine, id) order, so a host's push waits at most one batch; the
rollup triggers take each deleted boot out of the report as any delete does. A batch that
PostgreSQL aborts for a deadlock with a push is tried again; one that waits on a lock
over ``LOCK_TIMEOUT_S`` is run again machine by machine, and a machine whose rows a
session holds (a host may lock its own boots) is left whole for the next run, holding up
no other; a lock on a whole table (or SQLite's database) leaves every boot from there.

The clock is the database server's (PostgreSQL's ``clock_timestamp()``; SQLite's is
this machine's). The clock's check: when more of the machines the run deletes from
have not booted since the cutoff (silent: every boot of theirs old) than machines have
(alive), that clock may be ahead by more than ``max_age`` (then every machine is silent
and none alive) and nothing is deleted without ``--force``. Machines are counted, not
boots, so that no one host (a machine of its own, the only one it writes) makes a wrong
clock pass; a fleet that reboots now and then has machines alive, however rarely each
reboots. A clock ahead by less than ``max_age`` passes: the boots it ages early go.
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_right
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
_LOCKED = "55P03"  # lock_not_available: lock_timeout passed
LOCK_TIMEOUT_S = 60  # a batch waiting longer on a lock is looked at again (_delete_all)
# the tables a batch writes (its DELETEs, and the rollup triggers' writes), locked as
# they lock them: NOWAIT tells a lock on a whole table (fleet rollups --rebuild, a
# migration, a VACUUM FULL) from a session holding some rows
WRITTEN_SQL = r"""
SELECT quote_ident(c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
  AND (c.relname IN ('blobs', 'events', 'pstore_records', 'kexec_attempts', 'boots')
       OR c.relname LIKE 'fleet\_rollup\_%')
ORDER BY 1
"""

# every boot of the machines with one older than the cutoff, its age the running
# maximum of the times up to it (those ahead of the clock left out), its rank from the
# machine's newest and the machine's latest time (not ahead of the clock); a boot ahead
# of the clock itself stays. Times are bound as integers, as the column is: a float
# would cast every row's time and read the whole table instead of ix_boots_booted_at.
DOOMED_SQL = """
WITH m AS (SELECT DISTINCT machine_id FROM boots WHERE booted_at < :cutoff),
aged AS (
  SELECT b.id, b.machine_id, b.booted_at,
         max(CASE WHEN b.booted_at <= :now THEN b.booted_at END) OVER (
           PARTITION BY b.machine_id ORDER BY coalesce(b.seq, 0), b.id
           ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS age,
         row_number() OVER (
           PARTITION BY b.machine_id ORDER BY coalesce(b.seq, 0) DESC, b.id DESC) AS from_newest,
         max(CASE WHEN b.booted_at <= :now THEN b.booted_at END) OVER (
           PARTITION BY b.machine_id) AS latest
  FROM boots b WHERE b.machine_id IN (SELECT machine_id FROM m))
SELECT id, machine_id, latest FROM aged
WHERE from_newest > 1 AND age < :cutoff AND (booted_at IS NULL OR booted_at <= :now)
ORDER BY machine_id, id
"""
# the machines that booted since the cutoff, newest first (read until enough are seen)
ALIVE_SQL = """
SELECT machine_id FROM boots WHERE booted_at >= :cutoff AND booted_at <= :now
ORDER BY booted_at DESC
"""
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
    silent: int = 0  # of them, machines with no boot since the cutoff
    alive: int = 0  # machines with a boot since the cutoff (counted up to silent + 1)
    suspect: str | None = None  # the clock's check failed (a --dry-run went on)
    batches: int = 0
    retried: int = 0
    held: int = 0  # boots left for the next run: their rows, or a table, locked too long
    held_machines: int = 0  # machines whose rows a session held over LOCK_TIMEOUT_S
    table_locked: bool = False  # a lock on a whole table: every boot after it held
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))


@dataclass
class Plan:
    """The boots to delete, in (machine, id) order: ids only, 8 bytes each (a first
    retention of years of a large fleet finds tens of millions)."""

    ids: array[int] = field(default_factory=lambda: array("q"))
    starts: array[int] = field(default_factory=lambda: array("q"))  # each machine's first
    silent: int = 0  # machines with no boot since the cutoff: every boot of theirs old

    @property
    def machines(self) -> int:
        return len(self.starts)

    def machine_end(self, i: int) -> int:
        """Where in ``ids`` the boots of the machine of ``ids[i]`` end."""
        k = bisect_right(self.starts, i)
        return self.starts[k] if k < len(self.starts) else len(self.ids)


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


def doomed(conn: Connection, now: int, cutoff: int) -> Plan:
    """The boots to delete, streamed from the server (a cursor, not every row at once)."""
    plan = Plan()
    last: str | None = None
    rows = conn.execution_options(stream_results=True, yield_per=PARAMS).execute(
        text(DOOMED_SQL), {"now": now, "cutoff": cutoff}
    )
    for pk, machine, latest in rows:
        if machine != last:
            last = machine
            plan.starts.append(len(plan.ids))
            plan.silent += latest is not None and latest < cutoff
        plan.ids.append(int(pk))
    return plan


def alive(conn: Connection, now: int, cutoff: int, enough: int) -> int:
    """The machines that booted since the cutoff, counted up to ``enough`` (the newest
    boots first: in a fleet that boots, a few rows)."""
    seen: set[str] = set()
    rows = conn.execution_options(stream_results=True, yield_per=1000).execute(
        text(ALIVE_SQL), {"now": now, "cutoff": cutoff}
    )
    for (machine,) in rows:
        seen.add(machine)
        if len(seen) >= enough:
            break
    rows.close()
    return len(seen)


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
    (PostgreSQL's protocol takes 65,535 parameters a statement); on PostgreSQL a lock
    waited on for ``LOCK_TIMEOUT_S`` ends it (a host's session holding its boots' rows)."""
    act = _count if dry_run else _delete
    parts = [ids[i : i + PARAMS] for i in range(0, len(ids), PARAMS)]
    got = dict.fromkeys(TABLES, 0)
    with store.writer.begin() as conn:
        if conn.dialect.name == "postgresql":  # a lock's wait ends the batch, nothing else
            conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'"))
            conn.execute(text("SET LOCAL statement_timeout = 0"))
        for table, column in (*CHILDREN, ("boots", "id")):
            for part in parts:
                got[table] += act(conn, table, column, part)
    return got


def _sqlstate(e: DBAPIError) -> str | None:
    return getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)


def _held(e: DBAPIError) -> bool:
    """A lock waited on too long: PostgreSQL's lock_timeout, SQLite's busy timeout."""
    return _sqlstate(e) == _LOCKED or "database is locked" in str(e.orig)


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
    rule above. The clock's check: more machines with every boot old (silent) than
    machines with a boot since the cutoff (alive) raises :class:`Refused`, unless
    ``force`` (or ``dry_run``: counted all the same, ``suspect`` says why). A database
    error is one line. What a lock holds too long is left for the next run (``held``):
    ``_delete_all``."""
    out: Outcome | None = None
    try:
        with store.engine.connect() as conn:
            may_delete(conn, store.location)
            now = server_now(conn)
            cutoff = now - max_age
            now_i, cut_i = math.floor(now), math.ceil(cutoff)  # times are whole seconds
            plan = doomed(conn, now_i, cut_i)
            out = Outcome(now=now, cutoff=cutoff, planned=len(plan.ids), machines=plan.machines)
            out.silent = plan.silent
            if plan.silent and not force:
                out.alive = alive(conn, now_i, cut_i, plan.silent + 1)
                if plan.silent > out.alive:
                    out.suspect = (
                        f"{plan.silent} machines of {store.location} have not booted since "
                        f"{_day(cutoff)} by the database's clock, more than the {out.alive} "
                        "that have: is that clock right?"
                    )
                    if not dry_run:
                        raise Refused(
                            f"fleet retain: {out.suspect} Nothing deleted (--force deletes by it)"
                        )
        _delete_all(store, plan, out=out, batch=batch, dry_run=dry_run, progress=progress)
        return out
    except SQLAlchemyError as e:
        done = ""
        if out is not None and out.batches:
            verb = "counted" if dry_run else "deleted"
            stay = "" if dry_run else ", which stay deleted"
            done = f" (after {out.deleted['boots']} boots {verb} in {out.batches} batches{stay})"
        raise StoreError(
            f"fleet retain: cannot delete from {store.location}: {describe_db_error(e)}{done}"
        ) from None


def _try(store: Store, ids: Sequence[int], dry_run: bool, out: Outcome) -> dict[str, int] | None:
    """One batch, run again after a deadlock (``RETRIES``); None: a lock held it."""
    for attempt in range(RETRIES + 1):
        try:
            return _batch(store, ids, dry_run=dry_run)
        except DBAPIError as e:
            if _held(e):
                return None
            if _sqlstate(e) not in _RETRYABLE or attempt == RETRIES:
                raise
            out.retried += 1
    return None  # (not reached)


def _table_locked(store: Store) -> bool:
    """Whether a lock on a whole table would hold any batch (SQLite: always, one lock)."""
    if store.url.get_backend_name() != "postgresql":
        return True
    try:
        with store.engine.begin() as conn:
            tables = list(conn.execute(text(WRITTEN_SQL)).scalars())
            conn.execute(text(f"LOCK TABLE {', '.join(tables)} IN ROW EXCLUSIVE MODE NOWAIT"))
    except DBAPIError as e:
        if _sqlstate(e) == _LOCKED:
            return True
        raise
    return False


def _delete_all(
    store: Store,
    plan: Plan,
    *,
    out: Outcome,
    batch: int,
    dry_run: bool,
    progress: Callable[[Outcome], None] | None,
) -> None:
    """The batches, in (machine, id) order. A batch a lock held is run again machine by
    machine, unless a whole table is locked (then it and every boot after it are left):
    a machine whose rows a session holds (a host may lock its own boots) is left whole,
    its later boots too, and holds up no other machine."""

    def add(got: dict[str, int]) -> None:
        for t, n in got.items():
            out.deleted[t] += n
        out.batches += 1

    def table_locked(i: int) -> bool:
        """A whole table locked: the boots from ``i`` on are left."""
        if not _table_locked(store):
            return False
        out.table_locked = True
        out.held += len(plan.ids) - i
        return True

    def shown() -> None:
        if progress is not None:
            progress(out)

    i = 0
    while i < len(plan.ids):
        end = min(i + batch, len(plan.ids))
        got = _try(store, plan.ids[i:end], dry_run, out)
        if got is not None:
            add(got)
        elif table_locked(i):
            break
        else:
            j = i
            while j < end:  # machine by machine
                last = plan.machine_end(j)
                part = _try(store, plan.ids[j : min(last, end)], dry_run, out)
                if part is not None:
                    add(part)
                elif table_locked(j):  # a table's lock taken since: not this machine's
                    shown()
                    return
                else:  # this machine's rows are held: all of them left
                    out.held_machines += 1
                    out.held += last - j
                    end = max(end, last)
                j = min(last, end)
                shown()
        i = end
        shown()
    shown()


def _day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))
