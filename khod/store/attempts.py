"""Kexec attempts: recorded before a kexec, given a verdict by the next boot's ingest."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from khod import records
from khod.errors import StoreError
from khod.observation import BootKind
from khod.store.handle import Store, describe_db_error
from khod.store.schema import boots, counters, kexec_attempts

# the counters row of khod_kexec_attempts_total (migration 0011 bumps it)
ATTEMPTS_COUNTER = "kexec_attempts"
# what a 6.16-7.0 kernel logs when the kernel before it kexec'd without finalizing KHO
NOT_FINALIZED = "disabling KHO revival: -2"


@dataclass(frozen=True)
class AttemptVerdict:
    """The verdict one boot gave the attempt that led to it."""

    attempt_id: int
    verdict: str
    detail: str


def save_attempt(store: Store, values: dict[str, Any]) -> int:
    try:
        with store.writer.begin() as conn:
            return int(
                conn.execute(
                    insert(kexec_attempts)
                    .values(uid=str(uuid.uuid4()), created_at=time.time(), **values)
                    .returning(kexec_attempts.c.id)
                ).scalar_one()
            )
    except SQLAlchemyError as e:
        raise StoreError(
            f"cannot record the kexec attempt in {store.location}: {describe_db_error(e)}"
        ) from None


def fail_attempt(store: Store, attempt_id: int, detail: str) -> None:
    """The load or exec step failed: nothing happened, nothing to wait for."""
    with store.writer.begin() as conn:
        conn.execute(
            update(kexec_attempts)
            .where(kexec_attempts.c.id == attempt_id)
            .values(verdict=records.Verdict.FAILED, verdict_detail=detail)
        )


def has_open_attempt(store: Store, machine_id: str, boot_pk: int) -> bool:
    with store.engine.connect() as conn:
        return (
            conn.execute(
                select(func.count())
                .select_from(kexec_attempts)
                .where(
                    kexec_attempts.c.machine_id == machine_id,
                    kexec_attempts.c.from_boot == boot_pk,
                    kexec_attempts.c.verdict.is_(None),
                )
            ).scalar_one()
            > 0
        )


def judge(
    expected_release: str, expected_count: int, boot: Any, target_release: str | None = None
) -> tuple[str, str]:
    """The verdict on one attempt from the boot that followed it."""
    got = f"{boot.kind} from {boot.previous_release} count {boot.kexec_count}"
    want = f"kexec from {expected_release} count {expected_count}"
    if boot.kind == BootKind.KEXEC_REJECTED and not boot.kho_enabled:
        return (
            records.Verdict.LANDED_KHO_OFF,
            f"landed in a kernel with KHO off, the handover refused by configuration "
            f"({boot.kind_reason}): expected {want}",
        )
    if boot.kind == BootKind.KEXEC_REJECTED and NOT_FINALIZED in (boot.kind_reason or ""):
        return (
            records.Verdict.ABI_MISMATCH,
            f"the kexec was not finalized (out/finalize not written before it, 6.16-7.0), "
            f"so the handover was refused: {boot.kind_reason}",
        )
    if boot.kind == BootKind.KEXEC_REJECTED:
        return records.Verdict.ABI_MISMATCH, f"the handover was rejected: {boot.kind_reason}"
    if boot.kind == BootKind.KEXEC_NO_HANDOVER:
        return (
            records.Verdict.LANDED_WITHOUT_HANDOVER,
            f"loaded by kexec with no handover ({boot.kind_reason}): expected {want}",
        )
    if boot.kind == BootKind.COLD:
        return records.Verdict.COLD_BOOT, f"no handover data: expected {want}"
    if boot.previous_release == expected_release and boot.kexec_count == expected_count:
        return records.Verdict.LANDED, want
    if boot.previous_release is None and boot.kexec_count is None:
        # the handover was taken and the kernel names no previous kernel (no
        # kexec-metadata before 7.1): nothing says otherwise but the landing kernel
        if target_release is not None and boot.release != target_release:
            return records.Verdict.MISMATCH, f"expected {target_release}, got {boot.release}"
        return (
            records.Verdict.LANDED,
            f"a handover into {boot.release}; the kernel names no previous kernel "
            f"(no kexec-metadata): expected {want}",
        )
    return records.Verdict.MISMATCH, f"expected {want}, got {got}"


def close_attempts(
    conn: Connection, machine_id: str, boot_pk: int, prev_pk: int | None
) -> AttemptVerdict | None:
    """Give the open attempts made in the previous boot their verdict (the newest one is
    what happened; earlier ones in the same boot were superseded by it)."""
    if prev_pk is None:
        return None
    open_ = conn.execute(
        select(kexec_attempts)
        .where(
            kexec_attempts.c.machine_id == machine_id,
            kexec_attempts.c.from_boot == prev_pk,
            kexec_attempts.c.verdict.is_(None),
        )
        .order_by(kexec_attempts.c.id.desc())
    ).all()
    if not open_:
        return None
    boot = conn.execute(select(boots).where(boots.c.id == boot_pk)).one()
    newest, *older = open_
    verdict, detail = judge(
        newest.expected_previous_release,
        newest.expected_kexec_count,
        boot,
        newest.target_release,
    )
    conn.execute(
        update(kexec_attempts)
        .where(kexec_attempts.c.id == newest.id)
        .values(verdict=verdict, verdict_boot=boot_pk, verdict_detail=detail)
    )
    if older:
        conn.execute(
            update(kexec_attempts)
            .where(kexec_attempts.c.id.in_([a.id for a in older]))
            .values(
                verdict=records.Verdict.SUPERSEDED,
                verdict_boot=boot_pk,
                verdict_detail=f"a later attempt (#{newest.id}) was the one that ran",
            )
        )
    return AttemptVerdict(newest.id, verdict, detail)


def verdicts_by_boot(store: Store, boot_pks: Sequence[int]) -> dict[int, str]:
    q = select(kexec_attempts.c.verdict_boot, kexec_attempts.c.verdict).where(
        kexec_attempts.c.verdict_boot.in_(list(boot_pks)),
        kexec_attempts.c.verdict != records.Verdict.SUPERSEDED,
    )
    with store.engine.connect() as conn:
        return {b: v for b, v in conn.execute(q)}


def verdict_counts(conn: Connection, machine_id: str) -> dict[str, int]:
    """Every verdict this machine's store has given or imported, ever: a running total
    (``counters``, kept by the store's triggers) that retention does not lower."""
    return {
        v: int(n)
        for v, n in conn.execute(
            select(counters.c.label, counters.c.value).where(
                counters.c.machine_id == machine_id, counters.c.name == ATTEMPTS_COUNTER
            )
        )
    }
