"""What the readers (``khoctl history``, ``chain``, ``dmesg``) query: boots newest
first, a boot's pstore records and events, and the chain since the last cold boot.
The ingest's side (save_* and load_boot) is ``khod.store.boots``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from khod.observation import BootKind
from khod.store.boots import BootRecord, UnreadableRow
from khod.store.handle import Store
from khod.store.order import recorded_order
from khod.store.schema import boots, events, pstore_records


def load_boots(
    store: Store,
    machine_id: str | None = None,
    limit: int | None = None,
    skipped: list[str] | None = None,
) -> list[BootRecord]:
    """Boots newest first: one machine's in the order they were recorded, several
    machines' by boot time (then by ingest order). A row that cannot be read is left
    out, and why is added to ``skipped`` (when not given: UnreadableRow)."""
    q = select(boots)
    if machine_id is not None:
        seq, pk = recorded_order()
        q = q.where(boots.c.machine_id == machine_id).order_by(seq.desc(), pk.desc())
    else:
        # a boot whose time is unknown (btime not a time) stands where it was recorded
        when = func.coalesce(boots.c.booted_at, boots.c.ingested_at)
        q = q.order_by(when.desc().nulls_last(), boots.c.id.desc())
    if limit is not None:
        q = q.limit(limit)
    out = []
    with store.engine.connect() as conn:
        for r in conn.execute(q).mappings():
            try:
                out.append(BootRecord.from_row(r))
            except UnreadableRow as e:
                if skipped is None:
                    raise
                skipped.append(str(e))
    return out


def load_events(store: Store, boot_pk: int) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(events).where(events.c.boot_pk == boot_pk).order_by(events.c.id)
            ).mappings()
        ]


def load_pstore(store: Store, boot_pk: int) -> list[dict[str, Any]]:
    """Records found at this boot's ingest: what its predecessor left. Dumps in order of
    their record time; the parts of one dump oldest first (highest part first)."""
    q = select(pstore_records).where(pstore_records.c.collected_by == boot_pk)
    with store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    rows.sort(key=lambda r: (r["type"] != "dmesg", r["dump_key"], -(r["part"] or 0), r["id"]))
    return rows


def pstore_counts(store: Store, boot_pks: Sequence[int]) -> dict[int, int]:
    q = (
        select(pstore_records.c.collected_by, func.count())
        .where(pstore_records.c.collected_by.in_(list(boot_pks)))
        .group_by(pstore_records.c.collected_by)
    )
    with store.engine.connect() as conn:
        return {pk: n for pk, n in conn.execute(q)}


def chain_of(boots_newest_first: Sequence[BootRecord], boot_id: str | None) -> list[BootRecord]:
    """The boots since the last cold (or rejected) boot, oldest first, ending at boot_id
    (or at the newest boot)."""
    start = 0
    if boot_id is not None:
        for i, b in enumerate(boots_newest_first):
            if b.boot_id == boot_id:
                start = i
                break
    chain: list[BootRecord] = []
    for b in boots_newest_first[start:]:
        chain.append(b)
        if b.kind != BootKind.KEXEC:
            break
    chain.reverse()
    return chain
