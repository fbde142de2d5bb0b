"""save_* and load_* for boots, their raw blobs and events."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from khod import __version__
from khod.errors import StoreError
from khod.observation import (
    Boot,
    BootKind,
    BootObservation,
    Event,
    EventSource,
    PstoreRecord,
    Severity,
    Subtree,
    boot_facts,
)
from khod.records import KINDS, METADATA_SOURCES, MetadataSource
from khod.store.handle import Store, describe_db_error
from khod.store.order import predecessor
from khod.store.schema import blobs, boots, events, pstore_records, pstore_seen


@dataclass(frozen=True)
class BootRecord(Boot):
    """A boot as stored (or as it would be stored: ``khoctl status`` renders live ones):
    its facts and what the store adds to them."""

    khod_version: str
    id: int | None = None
    ingested_at: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> BootRecord:
        """The record of a row; UnreadableRow when a value is not of the shape this
        khod stores (a row that came in around import, or from a newer khod)."""
        values = {f.name: row[f.name] for f in fields(cls)}
        for name, load in _LOADED.items():
            try:
                values[name] = load(values[name])
            except (TypeError, ValueError, KeyError, AttributeError):
                raise UnreadableRow(
                    f"boot {row['boot_id']!r} of machine {row['machine_id']!r}: "
                    f"{name} is not of the shape khod stores"
                ) from None
        return cls(**values)


class UnreadableRow(StoreError):
    """A stored row this khod cannot show."""


def _subtree_rows(subtrees: Sequence[Subtree]) -> list[dict[str, Any]]:
    return [t.as_json() for t in subtrees]


def _subtrees_of(rows: Sequence[Mapping[str, Any]] | None) -> tuple[Subtree, ...]:
    return tuple(Subtree(r["name"], r.get("size")) for r in rows or ())


def _kind_of(value: str) -> str:
    """The BootKind it names; a kind this version does not know stays a string."""
    return BootKind(value) if value in KINDS else value


def _source_of(value: str | None) -> str | None:
    """The MetadataSource it names; one this version does not know stays a string."""
    return MetadataSource(value) if value in METADATA_SOURCES else value


# how a boot's field is stored where it is not stored as it is (JSON columns), and read
_STORED: dict[str, Callable[[Any], Any]] = {
    "kind": str,
    "metadata_source": lambda v: None if v is None else str(v),
    "subtrees": _subtree_rows,
    "out_subtrees": _subtree_rows,
    "scratch": lambda areas: [[phys, n] for phys, n in areas],
}
_LOADED: dict[str, Callable[[Any], Any]] = {
    "kind": _kind_of,
    "metadata_source": _source_of,
    "subtrees": _subtrees_of,
    "out_subtrees": _subtrees_of,
    "scratch": lambda areas: tuple((int(phys), int(n)) for phys, n in areas or ()),
}
# a BootRecord's fields that the store adds to what was observed
STORE_ONLY = frozenset({"khod_version", "id", "ingested_at"})


@dataclass(frozen=True)
class SaveResult:
    boot_pk: int
    created: bool
    new_blobs: int
    new_events: int
    pstore_saved: frozenset[str] = frozenset()  # sha256 of the records new to the store
    verdict: Any = None  # khod.store.attempts.AttemptVerdict: the attempt this boot closed
    chain: Any = None  # khod.store.chain.Chain: the chain khod derived for this boot

    @property
    def new_pstore(self) -> int:
        return len(self.pstore_saved)


def boot_values(boot: Boot) -> dict[str, Any]:
    """The boots row for a boot's facts (observed or recorded), each by its name."""
    values = {}
    for name, v in boot_facts(boot).items():
        values[name] = _STORED[name](v) if name in _STORED else v
    values["khod_version"] = __version__
    return values


def live_record(obs: BootObservation) -> BootRecord:
    """The record ``obs`` would be once stored."""
    return BootRecord(**boot_facts(obs), khod_version=__version__)


def event_values(boot_pk: int | None, e: Event, now: float) -> dict[str, Any]:
    return {
        "boot_pk": boot_pk,
        "created_at": now,
        "kind": e.kind,
        "source": e.source,
        "severity": str(e.severity),
        "message": e.message,
        "fingerprint": e.fingerprint,
        "origin": e.origin,
    }


def save_observation(store: Store, obs: BootObservation) -> SaveResult:
    """Insert the boot (once per machine_id, boot_id) and whatever blobs and events are
    not stored yet, in one transaction: a crash mid-way leaves nothing half-written."""
    for attempt in range(3):
        try:
            with store.writer.begin() as conn:
                from khod.store.identity import resolve_identity  # noqa: PLC0415

                known, adopted = resolve_identity(conn, obs)
                return _save(conn, known, adopted=adopted)
        except IntegrityError as e:
            msg = describe_db_error(e)
            # a concurrent writer inserted the same boot or record first: look again
            race = "UNIQUE constraint" in msg or "duplicate key" in msg
            if not race or attempt == 2:
                raise StoreError(f"cannot record boot {obs.boot_id}: {msg}") from None
        except SQLAlchemyError as e:
            raise StoreError(
                f"cannot write to database {store.location}: {describe_db_error(e)}"
            ) from None
    raise AssertionError("unreachable")


def _save(conn: Connection, obs: BootObservation, *, adopted: bool = False) -> SaveResult:
    now = time.time()
    pk = conn.execute(
        select(boots.c.id).where(
            boots.c.machine_id == obs.machine_id, boots.c.boot_id == obs.boot_id
        )
    ).scalar()
    created = pk is None
    if pk is None:
        seq = conn.execute(
            select(func.coalesce(func.max(boots.c.seq), 0) + 1).where(
                boots.c.machine_id == obs.machine_id
            )
        ).scalar_one()
        pk = conn.execute(
            insert(boots).values(**boot_values(obs), seq=seq, ingested_at=now).returning(boots.c.id)
        ).scalar_one()
    elif obs.warnings is not None:
        # a later look at the same boot (khoctl kexec, at its end) has seen more of its log
        conn.execute(
            update(boots)
            .where(
                boots.c.id == pk,
                or_(boots.c.warnings.is_(None), boots.c.warnings < obs.warnings),
            )
            .values(warnings=obs.warnings)
        )
    have_blobs = {
        (d, n)
        for d, n in conn.execute(
            select(blobs.c.direction, blobs.c.name).where(blobs.c.boot_pk == pk)
        )
    }
    new_blobs = [
        {
            "boot_pk": pk,
            "direction": b.direction,
            "name": b.name,
            "size": len(b.data),
            "sha256": b.sha256,
            "data": b.data,
        }
        for b in obs.blobs
        if (b.direction, b.name) not in have_blobs
    ]
    if new_blobs:
        conn.execute(insert(blobs), new_blobs)
    have_events: set[str] = set()
    have_kinds: set[tuple[str, str]] = set()
    for fingerprint, kind, source in conn.execute(
        select(events.c.fingerprint, events.c.kind, events.c.source).where(events.c.boot_pk == pk)
    ):
        have_events.add(fingerprint)
        have_kinds.add((kind, source))
    new_events = []
    for e in obs.events:
        # an event keyed by ``same_as`` is one per kind and source on a boot: a row an
        # earlier khod keyed by its message (before same_as) is that event too
        if e.fingerprint in have_events or (
            e.same_as is not None and (e.kind, e.source) in have_kinds
        ):
            continue
        have_events.add(e.fingerprint)
        have_kinds.add((e.kind, e.source))
        new_events.append(event_values(pk, e, now))
    if new_events:
        conn.execute(insert(events), new_events)
    pstore_saved = _save_pstore(conn, obs.machine_id, pk, obs.pstore, now)
    verdict = chain = None
    if created or adopted:  # adopted: now on its machine, after that machine's boot before
        from khod.store.attempts import close_attempts  # noqa: PLC0415
        from khod.store.chain import derive_chain  # noqa: PLC0415

        prev_pk = predecessor(conn, obs.machine_id, pk)
        verdict = close_attempts(conn, obs.machine_id, pk, prev_pk)
        chain = derive_chain(conn, obs, pk, prev_pk, attempted=verdict is not None)
        if verdict is not None:
            sev = "info" if verdict.verdict == "landed" else "warning"
            e = Event(
                "kexec-verdict",
                "kexec",
                Severity(sev),
                f"kexec attempt #{verdict.attempt_id}: {verdict.verdict} ({verdict.detail})",
                origin=EventSource.KEXEC,
            )
            conn.execute(insert(events).values(**event_values(pk, e, now)))
    return SaveResult(pk, created, len(new_blobs), len(new_events), pstore_saved, verdict, chain)


def save_later(
    store: Store,
    boot_pk: int,
    machine_id: str,
    records: Sequence[PstoreRecord] = (),
    evs: Sequence[Event] = (),
) -> SaveResult:
    """Add pstore records and events to a boot already recorded (a late pstore backend,
    the outcome of unlinking pstore files)."""
    now = time.time()
    try:
        with store.writer.begin() as conn:
            have = set(
                conn.execute(
                    select(events.c.fingerprint).where(events.c.boot_pk == boot_pk)
                ).scalars()
            )
            rows = []
            for e in evs:
                if e.fingerprint not in have:
                    have.add(e.fingerprint)
                    rows.append(event_values(boot_pk, e, now))
            if rows:
                conn.execute(insert(events), rows)
            pstore_saved = _save_pstore(conn, machine_id, boot_pk, records, now)
            return SaveResult(boot_pk, False, 0, len(rows), pstore_saved)
    except SQLAlchemyError as e:
        raise StoreError(
            f"cannot write to database {store.location}: {describe_db_error(e)}"
        ) from None


def _pstore_values(
    r: PstoreRecord, machine_id: str, pk: int, prev: int | None, now: float
) -> dict[str, Any]:
    return {
        "machine_id": machine_id,
        "sha256": r.sha256,
        "collected_by": pk,
        "describes": prev,
        "location": r.location,
        "path": r.path,
        "name": r.name,
        "type": r.type,
        "backend": r.backend,
        "record_id": r.record_id if r.record_id is not None and r.record_id < 2**63 else None,
        "part": r.part,
        "reason": r.reason,
        "count": r.count,
        "record_time": r.record_time,
        "compressed": r.compressed,
        "inflate_status": r.inflate_status,
        "size": len(r.raw),
        "raw": r.raw,
        "text": r.text,
        "release": r.release,
        "dump_key": r.dump_key,
        "collected_at": now,
    }


def _save_pstore(
    conn: Connection, machine_id: str, pk: int, records: Sequence[PstoreRecord], now: float
) -> frozenset[str]:
    """Insert the records this store has not seen; their hashes."""
    if not records:
        return frozenset()
    hashes = sorted({r.sha256 for r in records})
    # seen before: kept in pstore_seen even when retention deleted the record (the
    # archive still has it); pstore_records too, for rows imported into this store
    have = set(
        conn.execute(
            select(pstore_seen.c.sha256)
            .where(pstore_seen.c.machine_id == machine_id, pstore_seen.c.sha256.in_(hashes))
            .union(
                select(pstore_records.c.sha256).where(
                    pstore_records.c.machine_id == machine_id,
                    pstore_records.c.sha256.in_(hashes),
                )
            )
        ).scalars()
    )
    prev = predecessor(conn, machine_id, pk)
    rows = []
    for r in records:
        if r.sha256 not in have:
            have.add(r.sha256)
            rows.append(_pstore_values(r, machine_id, pk, prev, now))
    if rows:
        conn.execute(insert(pstore_records), rows)
        conn.execute(
            insert(pstore_seen),
            [{"machine_id": machine_id, "sha256": r["sha256"], "first_seen": now} for r in rows],
        )
    return frozenset(r["sha256"] for r in rows)


def load_boot(store: Store, machine_id: str, boot_id: str) -> BootRecord | None:
    with store.engine.connect() as conn:
        row = (
            conn.execute(
                select(boots).where(boots.c.machine_id == machine_id, boots.c.boot_id == boot_id)
            )
            .mappings()
            .first()
        )
    return BootRecord.from_row(row) if row else None
