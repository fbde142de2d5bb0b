"""Sync: store-and-forward from a host's SQLite to the fleet database, the import fed
from the local store's rows past a watermark per object type.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from khod.errors import StoreError
from khod.fleet.export import iter_objects
from khod.fleet.format import TABLES, validate
from khod.fleet.importer import ImportCounts, Importer
from khod.store.db import open_store
from khod.store.handle import Store, describe_db_error
from khod.store.schema import sync_state


@dataclass
class SyncResult:
    target: str
    counts: ImportCounts
    watermarks: dict[str, int]

    def line(self) -> str:
        return f"synced {', '.join(self.counts.summary()) or 'nothing new'} to {self.target}"


def _watermarks(local: Store, target: str) -> dict[str, int]:
    with local.engine.connect() as conn:
        rows = conn.execute(
            select(sync_state.c.kind, sync_state.c.last_id).where(sync_state.c.target == target)
        ).all()
    return {k: v for k, v in rows}


def sync(local: Store, target: Store, *, full: bool = False) -> SyncResult:
    """Push the local rows the target has not had yet. Watermarks (the last local row
    id sent, per type) advance only after the target committed, so a failure at any
    point sends the same rows again next time, and the import ignores what it has."""
    name = target.location
    marks = {} if full else _watermarks(local, name)
    importer = Importer(target)
    new_marks: dict[str, int] = {}
    for kind in TABLES:
        last = marks.get(kind, 0)
        top = last
        if kind == "attempt":
            # attempts change once (their verdict): resend from the oldest one that was
            # still open last time
            objs = iter_objects(local, kind, after_id=0, min_id=last or None, with_ids=True)
        else:
            objs = iter_objects(local, kind, after_id=last, with_ids=True)
        open_min = None
        for obj in objs:
            rid = obj.pop("_id")
            top = max(top, rid)
            if kind == "attempt" and obj["verdict"] is None and open_min is None:
                open_min = rid
            obj.pop("object")
            _, values = validate({"object": kind, **obj})
            importer.add(kind, values)
        importer.flush()
        new_marks[kind] = (
            open_min if open_min is not None else top + 1 if kind == "attempt" else top
        )
    _save_watermarks(local, name, new_marks)
    return SyncResult(name, importer.counts, new_marks)


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


def push(to: str, db: str | None = None, *, full: bool = False) -> SyncResult:
    """Sync the store at ``db`` (the default: this host's) to the database at ``to``."""
    local = open_store(db, create=False)
    try:
        target = open_store(to)
        try:
            return sync(local, target, full=full)
        finally:
            target.dispose()
    finally:
        local.dispose()
