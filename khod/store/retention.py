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

from sqlalchemy import Connection, delete, func, select

from khod.store.boots import recorded_order
from khod.store.db import Store
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


def apply_retention(
    store: Store,
    machine_id: str,
    keep_pk: int,
    *,
    max_boots: int,
    max_age: int,
    max_bytes: int,
    now: float | None = None,
) -> int:
    """Delete boots beyond the limits (0 = no limit); return how many were deleted."""
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
        rows = conn.execute(q).all()
        pinned = _unexported_owned(conn, machine_id) if max_boots or max_bytes else set()
        doomed = []
        total = 0
        kept = 0
        for pk, booted_at, size in rows:  # newest first
            old = max_age and booted_at is not None and booted_at < now - max_age
            over_count = max_boots and kept >= max_boots
            over_bytes = max_bytes and total + int(size) > max_bytes
            if pk != keep_pk and (old or ((over_count or over_bytes) and pk not in pinned)):
                doomed.append(pk)
            else:
                total += int(size)
                kept += 1
        if doomed:
            conn.execute(delete(boots).where(boots.c.id.in_(doomed)))
    return len(doomed)
