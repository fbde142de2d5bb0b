"""The metrics snapshot (``khod.contracts.MetricsSnapshot``): what the resident daemon
serves, computed from the store by the ingest child (the daemon itself never imports
SQLAlchemy), written atomically as versioned JSON."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, or_, select

from khod.atomic import write_file
from khod.contracts import MetricsSnapshot, SnapshotBoot, encode
from khod.records import Severity, legacy_source
from khod.store.boots import load_boot
from khod.store.handle import Store
from khod.store.schema import boots, events, pstore_records


def compute_snapshot(
    store: Store, machine_id: str, boot_id: str, *, ingested_at: float, duration: float
) -> MetricsSnapshot:
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
            (str(b), str(t), int(n))
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
    b = None
    if boot is not None:
        b = SnapshotBoot(
            boot_id=boot.boot_id,
            release=boot.release,
            previous_release=boot.previous_release,
            kind=str(boot.kind),
            kho_abi=boot.kho_abi,
            kho_enabled=boot.kho_enabled,
            kexec_count=boot.kexec_count,
            metadata_source=None if boot.metadata_source is None else str(boot.metadata_source),
            booted_at=boot.booted_at,
            scratch_bytes=sum(n for _, n in boot.scratch or []),
            liveupdate_num=boot.liveupdate_num,
        )
    return MetricsSnapshot(
        machine_id=machine_id,
        boot=b,
        boots_by_kind=kinds,
        pstore=tuple(pstore),
        attempts_by_verdict=verdicts,
        source_errors=errors,
        last_ingest=ingested_at,
        ingest_duration=duration,
    )


def write_snapshot(path: Path, snap: MetricsSnapshot) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file(path, encode(snap))
