"""Retention: keep a machine's store within a count, an age and a byte budget.

Oldest boots go first (their blobs, events and the pstore records they found go with
them); the boot being ingested is always kept.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, func, select

from khod.store.db import Store
from khod.store.schema import blobs, boots, pstore_records


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
        .order_by(boots.c.booted_at.desc().nulls_last(), boots.c.id.desc())
    )
    with store.writer.begin() as conn:
        rows = conn.execute(q).all()
        doomed = []
        total = 0
        kept = 0
        for pk, booted_at, size in rows:  # newest first
            if pk == keep_pk:
                total += int(size)
                kept += 1
                continue
            old = max_age and booted_at is not None and booted_at < now - max_age
            over_count = max_boots and kept >= max_boots
            over_bytes = max_bytes and total + int(size) > max_bytes
            if old or over_count or over_bytes:
                doomed.append(pk)
            else:
                total += int(size)
                kept += 1
        if doomed:
            conn.execute(delete(boots).where(boots.c.id.in_(doomed)))
    return len(doomed)
