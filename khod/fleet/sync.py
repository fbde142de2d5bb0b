"""Sync: store-and-forward from a host's SQLite to the fleet database, the import fed
from the local store's rows past a watermark per object type.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from khod.errors import KhodError, StoreError
from khod.fleet.compat import Columns, raises_warnings, writable
from khod.fleet.export import iter_objects, rows_after
from khod.fleet.format import TABLES, BadObject, validate
from khod.fleet.importer import ImportCounts, Importer
from khod.fleet.tls import TlsSettings, secure_url
from khod.store.db import open_store
from khod.store.handle import Store, describe_db_error
from khod.store.schema import boots, sync_state


@dataclass
class SyncResult:
    target: str
    counts: ImportCounts
    watermarks: dict[str, int]
    refused: list[str] = field(default_factory=list)  # rows no reader could show

    def line(self) -> str:
        return f"synced {', '.join(self.counts.summary()) or 'nothing new'} to {self.target}"


def _watermarks(local: Store, target: str) -> dict[str, int]:
    with local.engine.connect() as conn:
        rows = conn.execute(
            select(sync_state.c.kind, sync_state.c.last_id).where(sync_state.c.target == target)
        ).all()
    return {k: v for k, v in rows}


# sync_state's kind for a digest of the attempts at or past the attempts' watermark as
# they were sent (id and verdict): unchanged, they need not be sent again
ATTEMPTS_SENT = "attempt-sent"


# sync_state's kinds for the warning count of the newest boot sent (the running one,
# whose count grows while it runs: docs/fleet.md), as warnings + 1 (0: not counted):
# as the last push saw it (a push is pending when it differs) and as the target has
# it (a push resends the boot when it differs and the target lets it raise the count)
BOOT_SEEN = "boot-warn-seen"  # (sync_state.kind: 16 characters at most)
BOOT_SENT = "boot-warn-sent"


def _warnings_mark(local: Store, pk: int) -> int | None:
    """The mark of local boot ``pk``'s warning count; None: no such boot (retention)."""
    with local.engine.connect() as conn:
        row = conn.execute(select(boots.c.warnings).where(boots.c.id == pk)).first()
    return None if row is None else _mark(row[0])


def _mark(warnings: int | None) -> int:
    return 0 if warnings is None else int(warnings) + 1


def _digest(rows: Sequence[tuple[int, str | None]]) -> int:
    h = hashlib.blake2b(repr(sorted(rows)).encode(), digest_size=7)
    return int.from_bytes(h.digest(), "big")


def pending(local: Store, name: str) -> bool:
    """Whether the local store holds anything a sync to ``name`` would send: read in
    the local store only, so that a host with nothing new never opens a connection to
    the fleet database."""
    marks = _watermarks(local, name)
    for kind in TABLES:
        last = marks.get(kind, 0)
        if kind != "attempt":
            if rows_after(local, kind, after_id=last):
                return True
            if kind == "boot" and last:
                seen = _warnings_mark(local, last)
                if seen is not None and seen != marks.get(BOOT_SEEN):
                    return True
            continue
        rows = [(int(i), v) for i, v in rows_after(local, kind, min_id=last or None)]
        if rows and _digest(rows) != marks.get(ATTEMPTS_SENT):
            return True
    return False


def sync(
    local: Store,
    target: Store,
    *,
    full: bool = False,
    name: str | None = None,
    on_row: Callable[[int], None] | None = None,
    columns: Columns | None = None,
    raises: bool = True,
) -> SyncResult:
    """Push the local rows the target has not had yet. Watermarks (the last local row
    id sent, per type, under ``name``: the target's location by default) advance only
    after the target committed, so a failure at any point sends the same rows again
    next time, and the import ignores what it has. The newest boot sent is sent again
    when its warning count grew since, if the target lets this push raise it
    (``raises``; khod.fleet.compat.raises_warnings)."""
    name = name or target.location
    held = _watermarks(local, name)
    marks = {} if full else held
    importer = Importer(target, raise_warnings=raises)
    new_marks: dict[str, int] = {}
    refused: list[str] = []
    rows = 0
    for kind in TABLES:
        last = marks.get(kind, 0)
        top = last
        top_mark = had = None  # the newest boot's warnings mark: as sent, as it was
        if kind == "attempt":
            # attempts change once (their verdict): resend from the oldest one that was
            # still open last time
            objs = iter_objects(local, kind, after_id=0, min_id=last or None, with_ids=True)
        elif kind == "boot":
            had = _warnings_mark(local, last) if last else None
            again = raises and had is not None and had != marks.get(BOOT_SENT)
            objs = iter_objects(local, kind, after_id=last - 1 if again else last, with_ids=True)
        else:
            objs = iter_objects(local, kind, after_id=last, with_ids=True)
        open_min = None
        sent = False
        sent_attempts: list[tuple[int, str | None]] = []
        # this khod's columns the target lacks (references by boot id are not columns)
        table = TABLES[kind][0]
        lacks = frozenset() if columns is None else _lacking(table, columns)
        for obj in objs:
            rid = obj.pop("_id")
            top = max(top, rid)
            sent = True
            if kind == "attempt":
                sent_attempts.append((rid, obj["verdict"]))
                if obj["verdict"] is None and open_min is None:
                    open_min = rid
            elif kind == "boot" and rid == top:
                top_mark = _mark(obj["warnings"])
            obj.pop("object")
            try:
                _, values = validate({"object": kind, **obj})
            except BadObject as e:  # a row no reader could show: the rest goes
                refused.append(_refused_line(kind, rid, obj, e))
                continue
            if lacks:
                values = {k: v for k, v in values.items() if k not in lacks}
            importer.add(kind, values)
            rows += 1
            if on_row is not None:
                on_row(rows)
        importer.flush()
        if kind == "boot" and top:
            if top_mark is not None:
                new_marks[BOOT_SEEN] = top_mark
                # the target has the count sent: raised, or a boot never sent before
                # (a --full push resends boots a target that may not raise them has)
                if raises or top > held.get(kind, 0):
                    new_marks[BOOT_SENT] = top_mark
            elif had is not None:  # not sent: seen, so not pending again for it
                new_marks[BOOT_SEEN] = had
        if kind != "attempt":
            new_marks[kind] = top
        elif open_min is not None:
            new_marks[kind] = open_min
        else:
            # past the newest attempt sent (all closed); with none sent, where it was
            new_marks[kind] = top + 1 if sent else last
        if kind == "attempt":
            floor = new_marks[kind]
            new_marks[ATTEMPTS_SENT] = _digest([r for r in sent_attempts if r[0] >= floor])
    _save_watermarks(local, name, new_marks)
    Importer(local).record_refused("sync-refused", refused[:10], len(refused[10:]))
    return SyncResult(name, importer.counts, new_marks, refused)


def quiet_result(name: str) -> SyncResult:
    """What a push with nothing past its watermarks returns, having connected nowhere."""
    return SyncResult(name, ImportCounts(), {})


def _lacking(table: Table, columns: Columns) -> frozenset[str]:
    have = columns.get(table.name)
    return frozenset() if have is None else frozenset(table.c.keys()) - have


def _refused_line(kind: str, rid: int, obj: dict[str, object], e: BadObject) -> str:
    boot = obj.get("boot_id") or obj.get("collected_by") or obj.get("from_boot")
    return f"{kind} (local row {rid}, boot {boot}) not sent: {e}"


def _save_watermarks(local: Store, target: str, marks: dict[str, int]) -> None:
    now = time.time()
    try:
        with local.writer.begin() as conn:
            for kind, last in marks.items():
                ins = sqlite_insert if local.url.get_backend_name() == "sqlite" else pg_insert
                stmt = ins(sync_state).values(target=target, kind=kind, last_id=last, synced_at=now)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["target", "kind"],
                        set_={"last_id": last, "synced_at": now},
                    )
                )
    except SQLAlchemyError as e:
        raise StoreError(
            f"cannot record sync progress in {local.location}: {describe_db_error(e)}"
        ) from None


def push(
    to: str,
    db: str | None = None,
    *,
    full: bool = False,
    tls: TlsSettings | None = None,
    on_row: Callable[[int], None] | None = None,
) -> SyncResult:
    """Sync the store at ``db`` (the default: this host's) to the database at ``to``,
    over verified TLS when it is remote (khod.fleet.tls): only when the local store
    holds something past the watermarks (or ``full``), and into a database of a
    revision in the compatible window, never migrating it (khod.fleet.compat). A
    failure is also recorded as an event of this host's newest boot (once per boot and
    message), then raised."""
    local = open_store(db, create=False)
    try:
        try:
            # named as configured: the TLS parameters added are not part of the name
            # (opening a store connects nowhere until it is asked something)
            target = open_store(secure_url(to, tls or TlsSettings()), migrate=False)
            try:
                name = Store(target.engine, make_url(to)).location
                if not full and not pending(local, name):
                    return quiet_result(name)
                columns = writable(target)
                raises = raises_warnings(target)
                return sync(
                    local, target, full=full, name=name, columns=columns, on_row=on_row,
                    raises=raises,
                )  # fmt: skip
            finally:
                target.dispose()
        except KhodError as e:
            record_failure(local, str(e))
            raise
    finally:
        local.dispose()


def record_failure(local: Store, message: str) -> None:
    """The event of a failed push (``sync-failed``), on the newest boot of the store;
    best effort: the push's own error is the one the operator sees."""
    from khod.observation import Event, Severity  # noqa: PLC0415
    from khod.records import EventSource  # noqa: PLC0415
    from khod.store.boots import event_values  # noqa: PLC0415
    from khod.store.schema import events  # noqa: PLC0415

    # info: khod_sync_failures_total counts it; a warning would count as a store error
    e = Event("sync-failed", "sync", Severity.INFO, message, origin=EventSource.STORE)
    try:
        with local.writer.begin() as conn:
            pk = conn.execute(select(boots.c.id).order_by(boots.c.id.desc()).limit(1)).scalar()
            if pk is None:
                return
            ins = sqlite_insert if local.url.get_backend_name() == "sqlite" else pg_insert
            conn.execute(
                ins(events)
                .values(event_values(pk, e, time.time()))
                .on_conflict_do_nothing(index_elements=["boot_pk", "fingerprint"])
            )
    except SQLAlchemyError:
        pass
