"""The metrics snapshot: what the resident daemon serves, computed from the store by the
ingest child (the daemon itself never imports SQLAlchemy), written atomically as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select

from khod.atomic import write_file
from khod.records import Severity, legacy_source
from khod.store.boots import load_boot
from khod.store.handle import Store
from khod.store.schema import boots, events, pstore_records

SNAPSHOT_VERSION = 1


def compute_snapshot(
    store: Store, machine_id: str, boot_id: str, *, ingested_at: float, duration: float
) -> dict[str, Any]:
    boot = load_boot(store, machine_id, boot_id)
    with store.engine.connect() as conn:
        kinds = {
            k: n
            for k, n in conn.execute(
                select(boots.c.kind, func.count())
                .where(boots.c.machine_id == machine_id)
                .group_by(boots.c.kind)
            )
        }
        pstore = [
            [b, t, n]
            for b, t, n in conn.execute(
                select(pstore_records.c.backend, pstore_records.c.type, func.count())
                .where(pstore_records.c.machine_id == machine_id)
                .group_by(pstore_records.c.backend, pstore_records.c.type)
                .order_by(pstore_records.c.backend, pstore_records.c.type)
            )
        ]
        from khod.store.attempts import verdict_counts  # noqa: PLC0415

        verdicts = verdict_counts(conn, machine_id)
        errors: dict[str, int] = {}
        if boot is not None and boot.id is not None:
            for origin, kind, path, n in conn.execute(
                select(events.c.origin, events.c.kind, events.c.source, func.count())
                .where(
                    events.c.boot_pk == boot.id,
                    # a source that could not be read counts, even when it is only told
                    # as info (debugfs unreadable without privileges)
                    or_(
                        events.c.severity.in_([Severity.WARNING, Severity.ERROR]),
                        events.c.kind == "read-error",
                    ),
                )
                .group_by(events.c.origin, events.c.kind, events.c.source)
            ):
                key = str(origin or legacy_source(kind, path))
                errors[key] = errors.get(key, 0) + n
    b: dict[str, Any] | None = None
    if boot is not None:
        b = {
            "boot_id": boot.boot_id,
            "release": boot.release,
            "previous_release": boot.previous_release,
            "kind": boot.kind,
            "kho_abi": boot.kho_abi,
            "kho_enabled": boot.kho_enabled,
            "kexec_count": boot.kexec_count,
            "metadata_source": boot.metadata_source,
            "booted_at": boot.booted_at,
            "scratch_bytes": sum(n for _, n in boot.scratch or []),
            "liveupdate_num": boot.liveupdate_num,
        }
    return {
        "version": SNAPSHOT_VERSION,
        "machine_id": machine_id,
        "boot": b,
        "boots_by_kind": kinds,
        "pstore": pstore,
        "attempts_by_verdict": verdicts,
        "source_errors": errors,
        "last_ingest": ingested_at,
        "ingest_duration": duration,
    }


def write_snapshot(path: Path, snap: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file(path, json.dumps(snap).encode())
