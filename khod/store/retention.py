"""Retention: keep a machine's store within a count, an age and a byte budget.

Oldest boots (in the order they were recorded) go first, with their blobs, events and
the pstore records they found; the boot being ingested is always kept. The hashes of
deleted pstore records stay (``pstore_seen``): the same bytes found again are not new.
A boot whose pstore files khod unlinked (``--own-pstore``: the store holds the only
copy) is kept by the count and byte limits until its records have been exported
(``khoctl sync`` or a full ``khoctl export``); the age limit still applies to it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, insert, select

from khod.observation import Event, EventSource, Severity
from khod.store.boots import event_values
from khod.store.handle import Store
from khod.store.order import recorded_order
from khod.store.schema import blobs, boots, events, pstore_records, sync_state

# sync_state's target for what a full ``khoctl export`` wrote (sync's targets are URLs)
EXPORT_TARGET = "khoctl export"


def pstore_exported_up_to(conn: Connection) -> int:
    """The highest pstore row id every row up to which was exported (sync or export)."""
    return int(
        conn.execute(
            select(func.coalesce(func.max(sync_state.c.last_id), 0)).where(
                sync_state.c.kind == "pstore"
            )
        ).scalar_one()
    )


def mark_exported(store: Store, last_pstore_id: int) -> None:
    """A full export wrote every pstore row up to ``last_pstore_id``."""
    with store.writer.begin() as conn:
        conn.execute(
            delete(sync_state).where(
                sync_state.c.target == EXPORT_TARGET, sync_state.c.kind == "pstore"
            )
        )
        conn.execute(
            sync_state.insert().values(
                target=EXPORT_TARGET, kind="pstore", last_id=last_pstore_id, synced_at=time.time()
            )
        )


def last_pstore_id(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(select(func.coalesce(func.max(pstore_records.c.id), 0))).scalar_one()
        )


def _unexported_owned(conn: Connection, machine_id: str) -> set[int]:
    """Boots holding pstore records whose files khod unlinked and nothing exported yet."""
    owned = (
        select(events.c.boot_pk)
        .join(boots, boots.c.id == events.c.boot_pk)
        .where(boots.c.machine_id == machine_id, events.c.kind == "pstore-unlinked")
        .distinct()
    )
    q = select(pstore_records.c.collected_by).where(
        pstore_records.c.collected_by.in_(owned),
        pstore_records.c.id > pstore_exported_up_to(conn),
    )
    return set(conn.execute(q.distinct()).scalars())


@dataclass(frozen=True)
class Retention:
    deleted: int
    events: tuple[Event, ...] = ()


# The kinds of the events that say why age retention did not use the clock as it was.
CLOCK_AHEAD = "retention-clock-ahead"
CLOCK_BEHIND = "retention-clock-behind"


def _age_times(
    conn: Connection, machine_id: str, rows: Sequence[tuple[int, int | None, int]], keep_pk: int
) -> tuple[dict[int, int], int | None]:
    """Each boot's time for the age limit, and the newest of them (the current boot left
    out). Boot times never go back along the recorded order, so a boot's age time is the
    latest boot time recorded up to it: a boot recorded with a clock behind is as old as
    the boot before it. A boot whose clock was found years ahead at its own ingest (event
    ``retention-clock-ahead``), and that a boot recorded after it contradicts (it booted
    earlier), gives no time at all."""
    ahead = set(
        conn.execute(
            select(events.c.boot_pk)
            .join(boots, boots.c.id == events.c.boot_pk)
            .where(boots.c.machine_id == machine_id, events.c.kind == CLOCK_AHEAD)
        ).scalars()
    )
    oldest_first = list(reversed(rows))
    later_min: list[int | None] = [None] * len(oldest_first)
    low: int | None = None
    for i in range(len(oldest_first) - 1, -1, -1):
        later_min[i] = low
        t = oldest_first[i][1]
        if t is not None:
            low = t if low is None else min(low, t)
    times: dict[int, int] = {}
    running: int | None = None
    for i, (pk, booted_at, _) in enumerate(oldest_first):
        low = later_min[i]
        outlier = pk in ahead and booted_at is not None and low is not None and low < booted_at
        if booted_at is not None and not outlier and pk != keep_pk:
            running = booted_at if running is None else max(running, booted_at)
        if running is not None:
            times[pk] = running
    return times, running


def _age_cutoff(newest: int | None, now: float, max_age: int) -> tuple[float | None, Event | None]:
    """Boots whose age time is before the cutoff are old; None: do not delete by age."""
    if newest is None or newest <= now <= newest + max_age:
        return now - max_age, None
    if now > newest:
        days = int((now - newest) // 86400)
        why = (
            f"retention: the clock is {days} days ahead of the newest recorded boot, "
            "more than retention.max_age: nothing deleted by age"
        )
        return None, Event(
            CLOCK_AHEAD, "retention", Severity.WARNING, why, origin=EventSource.IDENTITY
        )
    days = int((newest - now) // 86400)
    why = (
        f"retention: the clock is {days} days behind the newest recorded boot: "
        "age measured against that boot"
    )
    return newest - max_age, Event(
        CLOCK_BEHIND, "retention", Severity.WARNING, why, origin=EventSource.IDENTITY
    )


def _record(conn: Connection, boot_pk: int, e: Event, now: float) -> None:
    have = conn.execute(
        select(events.c.id).where(
            events.c.boot_pk == boot_pk, events.c.fingerprint == e.fingerprint
        )
    ).first()
    if have is None:
        conn.execute(insert(events).values(**event_values(boot_pk, e, now)))


def retention(
    store: Store,
    machine_id: str,
    keep_pk: int,
    *,
    max_boots: int,
    max_age: int,
    max_bytes: int,
    now: float | None = None,
) -> Retention:
    """Delete boots beyond the limits (0 = no limit). The age limit is measured against
    the clock only where the records agree with it: a clock more than max_age ahead of
    the newest recorded boot deletes nothing by age, and a clock behind it is replaced by
    it; either is an event of the current boot."""
    now = time.time() if now is None else now
    blob_bytes = (
        select(blobs.c.boot_pk, func.sum(blobs.c.size).label("n"))
        .group_by(blobs.c.boot_pk)
        .subquery()
    )
    pstore_bytes = (
        select(
            pstore_records.c.collected_by.label("boot_pk"),
            func.sum(pstore_records.c.size).label("n"),
        )
        .group_by(pstore_records.c.collected_by)
        .subquery()
    )
    q = (
        select(
            boots.c.id,
            boots.c.booted_at,
            func.coalesce(blob_bytes.c.n, 0) + func.coalesce(pstore_bytes.c.n, 0),
        )
        .outerjoin(blob_bytes, blob_bytes.c.boot_pk == boots.c.id)
        .outerjoin(pstore_bytes, pstore_bytes.c.boot_pk == boots.c.id)
        .where(boots.c.machine_id == machine_id)
        .order_by(*(c.desc() for c in recorded_order()))
    )
    with store.writer.begin() as conn:
        rows = [(int(pk), t, int(n)) for pk, t, n in conn.execute(q)]
        pinned = _unexported_owned(conn, machine_id) if max_boots or max_bytes else set()
        cutoff: float | None = None
        times: dict[int, int] = {}
        notes: list[Event] = []
        if max_age:
            times, newest = _age_times(conn, machine_id, rows, keep_pk)
            cutoff, note = _age_cutoff(newest, now, max_age)
            if note is not None:
                notes.append(note)
                _record(conn, keep_pk, note, now)
        doomed = []
        total = 0
        kept = 0
        for pk, _, size in rows:  # newest first
            old = cutoff is not None and pk in times and times[pk] < cutoff
            over_count = max_boots and kept >= max_boots
            over_bytes = max_bytes and total + int(size) > max_bytes
            if pk != keep_pk and (old or ((over_count or over_bytes) and pk not in pinned)):
                doomed.append(pk)
            else:
                total += int(size)
                kept += 1
        if doomed:
            conn.execute(delete(boots).where(boots.c.id.in_(doomed)))
    return Retention(len(doomed), tuple(notes))
