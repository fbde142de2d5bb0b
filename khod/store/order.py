"""The order boots were recorded in on their machine, which says which boot came before
which: never the wall clock, which can be stepped back before NTP or give two boots
the same second."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select, tuple_

from khod.store.schema import boots


def recorded_order() -> tuple[Any, Any]:
    """The order boots were recorded in on their machine: ``seq``, then the row id
    (boots imported without a ``seq`` come first, in the order they were imported)."""
    return func.coalesce(boots.c.seq, 0), boots.c.id


def predecessor(conn: Connection, machine_id: str, boot_pk: int) -> int | None:
    """The boot recorded just before this one on the same machine (never by wall clock:
    a clock stepped back, or two boots in one second, must not change it)."""
    seq, pk = recorded_order()
    me = conn.execute(select(seq, pk).where(boots.c.id == boot_pk)).one_or_none()
    if me is None:
        return None
    q = (
        select(boots.c.id)
        .where(boots.c.machine_id == machine_id, tuple_(seq, pk) < tuple_(*me))
        .order_by(seq.desc(), pk.desc())
    )
    return conn.execute(q.limit(1)).scalar()
