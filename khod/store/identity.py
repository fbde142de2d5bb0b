"""One boot, one row, whatever /etc/machine-id said when it was ingested.

A boot ingested before its machine id existed is stored under a provisional identity
(``khod.parse.proc.provisional_machine_id``). The first ingest of the same boot that
reads the real id adopts that row: its machine id, its pstore records (a record the
machine already has is the same bytes: the provisional copy goes) and its attempts are
re-keyed, and the records it found are linked to the machine's boot before. An ingest
that still has no id finds the boot under the id it was adopted by.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy import Connection, delete, func, select, update

from khod.observation import BootObservation, Event, EventSource, Severity
from khod.parse.proc import is_provisional, provisional_machine_id
from khod.store.schema import boots, kexec_attempts, pstore_records, pstore_seen


def resolve_identity(conn: Connection, obs: BootObservation) -> tuple[BootObservation, bool]:
    """The observation to save (its machine id the boot's recorded one), and whether a
    provisional row was adopted by the real machine id just now."""
    if is_provisional(obs.machine_id):
        known = conn.execute(
            select(boots.c.machine_id)
            .where(boots.c.boot_id == obs.boot_id, boots.c.machine_id != obs.machine_id)
            .limit(1)
        ).scalar()
        if known is None:
            return obs, False
        return dataclasses.replace(obs, machine_id=known), False
    provisional = provisional_machine_id(obs.boot_id)
    pk = conn.execute(
        select(boots.c.id).where(boots.c.machine_id == provisional, boots.c.boot_id == obs.boot_id)
    ).scalar()
    if pk is None:
        return obs, False
    taken = conn.execute(
        select(boots.c.id).where(
            boots.c.machine_id == obs.machine_id, boots.c.boot_id == obs.boot_id
        )
    ).scalar()
    if taken is not None:
        return obs, False  # both rows exist already (written by an older khod): leave them
    _rekey(conn, pk, provisional, obs.machine_id)
    event = Event(
        "machine-id-adopted",
        "/etc/machine-id",
        Severity.INFO,
        f"boot {obs.boot_id}, recorded as machine {provisional} before its machine id "
        f"was initialized, is now machine {obs.machine_id}",
        origin=EventSource.IDENTITY,
    )
    return dataclasses.replace(obs, events=(*obs.events, event)), True


def _rekey(conn: Connection, pk: int, provisional: str, machine_id: str) -> None:
    from khod.store.boots import predecessor  # noqa: PLC0415

    have = select(pstore_records.c.sha256).where(pstore_records.c.machine_id == machine_id)
    conn.execute(
        delete(pstore_records).where(
            pstore_records.c.machine_id == provisional, pstore_records.c.sha256.in_(have)
        )
    )
    conn.execute(
        update(pstore_records)
        .where(pstore_records.c.machine_id == provisional)
        .values(machine_id=machine_id)
    )
    conn.execute(
        update(kexec_attempts)
        .where(kexec_attempts.c.machine_id == provisional)
        .values(machine_id=machine_id)
    )
    # recorded after every boot the machine had: last in its order (boots.seq)
    seq = select(func.coalesce(func.max(boots.c.seq), 0) + 1).where(
        boots.c.machine_id == machine_id
    )
    conn.execute(
        update(boots)
        .where(boots.c.id == pk)
        .values(machine_id=machine_id, seq=seq.scalar_subquery())
    )
    # the hashes retention keeps for dedupe follow the records
    seen = select(pstore_seen.c.sha256).where(pstore_seen.c.machine_id == machine_id)
    conn.execute(
        delete(pstore_seen).where(
            pstore_seen.c.machine_id == provisional, pstore_seen.c.sha256.in_(seen)
        )
    )
    conn.execute(
        update(pstore_seen)
        .where(pstore_seen.c.machine_id == provisional)
        .values(machine_id=machine_id)
    )
    prev = predecessor(conn, machine_id, pk)
    if prev is not None:
        conn.execute(
            update(pstore_records)
            .where(pstore_records.c.collected_by == pk, pstore_records.c.describes.is_(None))
            .values(describes=prev)
        )
