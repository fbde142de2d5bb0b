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

from sqlalchemy import Connection, delete, func, insert, literal, select, update

from khod.observation import BootObservation, Event, EventSource, Severity
from khod.parse.proc import UNKNOWN_MACHINE, is_provisional, provisional_machine_id
from khod.store.order import predecessor
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
    row = conn.execute(
        select(boots.c.id, boots.c.machine_id).where(
            boots.c.machine_id.in_([provisional_machine_id(obs.boot_id), UNKNOWN_MACHINE]),
            boots.c.boot_id == obs.boot_id,
        )
    ).first()
    if row is None:
        return obs, False
    pk, provisional = row
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
    # only this boot's rows: under ``unknown`` the host's other boots stay where they are
    mine = pstore_records.c.collected_by == pk
    moved = select(pstore_records.c.sha256).where(mine, pstore_records.c.machine_id == provisional)
    have = select(pstore_records.c.sha256).where(pstore_records.c.machine_id == machine_id)
    seen = select(pstore_seen.c.sha256).where(pstore_seen.c.machine_id == machine_id)
    # the hashes retention keeps for dedupe follow the records (before they move)
    conn.execute(
        insert(pstore_seen).from_select(
            ["machine_id", "sha256", "first_seen"],
            select(literal(machine_id), pstore_seen.c.sha256, pstore_seen.c.first_seen).where(
                pstore_seen.c.machine_id == provisional,
                pstore_seen.c.sha256.in_(moved),
                pstore_seen.c.sha256.not_in(seen),
            ),
        )
    )
    if provisional != UNKNOWN_MACHINE:  # the boot's own identity: nothing else uses it
        conn.execute(delete(pstore_seen).where(pstore_seen.c.machine_id == provisional))
    conn.execute(
        delete(pstore_records).where(
            mine, pstore_records.c.machine_id == provisional, pstore_records.c.sha256.in_(have)
        )
    )
    conn.execute(
        update(pstore_records)
        .where(mine, pstore_records.c.machine_id == provisional)
        .values(machine_id=machine_id)
    )
    conn.execute(
        update(kexec_attempts)
        .where(kexec_attempts.c.machine_id == provisional, kexec_attempts.c.from_boot == pk)
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
    # what the boot's records describe: the machine's boot before it (under ``unknown``
    # they named that host's boot before, which is not this machine's)
    conn.execute(
        update(pstore_records)
        .where(pstore_records.c.collected_by == pk)
        .values(describes=predecessor(conn, machine_id, pk))
    )
