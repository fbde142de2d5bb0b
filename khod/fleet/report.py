"""Fleet reports. ``transitions``: for each (previous_release, release) a kexec went
through, how many boots and hosts took it, and how many of those boots crashed. Each
kind of boot is counted apart: a KHO handover (``kexec``), a kexec that carried none
(``kexec-no-handover``) and a handover refused (``kexec-rejected``); the last two have a
previous release only where khod's own kexec attempt recorded it.

A boot crashed when the next boot on its machine found a pstore record with a Panic
or Oops reason that describes it (``pstore_records.describes``). A dump of several
parts, or an Oops followed by a Panic, is one crashed boot: the rate is crashed boots
over boots, never above 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import distinct, func, literal, select
from sqlalchemy.exc import SQLAlchemyError

from khod.errors import StoreError
from khod.records import CRASH_REASONS, BootKind
from khod.store.handle import Store, describe_db_error
from khod.store.schema import boots, pstore_records


@dataclass(frozen=True)
class Transition:
    previous_release: str | None  # None: the cold-boot baseline of a release
    release: str
    kind: str  # the BootKind of these boots
    boots: int
    hosts: int
    crashes: int
    crash_rate: float
    first_booted_at: int | None
    last_booted_at: int | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


KEXEC_KINDS = (BootKind.KEXEC, BootKind.KEXEC_NO_HANDOVER, BootKind.KEXEC_REJECTED)


def transitions_query(since: float | None = None, include_cold: bool = False) -> Any:
    crashed = (
        select(pstore_records.c.describes.label("boot_pk"))
        .where(
            pstore_records.c.reason.in_(CRASH_REASONS),
            pstore_records.c.describes.is_not(None),
        )
        .distinct()
        .subquery("crashed")
    )
    prev = boots.c.previous_release
    q = (
        select(
            prev.label("previous_release"),
            boots.c.release,
            boots.c.kind,
            func.count().label("boots"),
            func.count(distinct(boots.c.machine_id)).label("hosts"),
            func.count(crashed.c.boot_pk).label("crashes"),
            func.min(boots.c.booted_at).label("first_booted_at"),
            func.max(boots.c.booted_at).label("last_booted_at"),
        )
        .select_from(boots.outerjoin(crashed, crashed.c.boot_pk == boots.c.id))
        .group_by(prev, boots.c.release, boots.c.kind)
    )
    # a kexec without metadata (before 7.1) has no known previous release: left out
    kexec = boots.c.kind.in_(KEXEC_KINDS) & prev.is_not(None)
    # the baseline: cold boots, and the others whose previous release nobody recorded
    q = q.where(kexec | (boots.c.kind != BootKind.KEXEC) if include_cold else kexec)
    if since is not None:
        q = q.where(boots.c.booted_at >= literal(int(since)))
    return q


def transitions(
    store: Store, since: float | None = None, include_cold: bool = False
) -> list[Transition]:
    """Rows sorted worst first: by crash rate, then by boots (more evidence first)."""
    q = transitions_query(since, include_cold)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(q).all()
    except SQLAlchemyError as e:
        raise StoreError(f"cannot read {store.location}: {describe_db_error(e)}") from None
    out = [
        Transition(
            previous_release=r.previous_release,
            release=r.release,
            kind=str(r.kind),
            boots=int(r.boots),
            hosts=int(r.hosts),
            crashes=int(r.crashes),
            crash_rate=int(r.crashes) / int(r.boots),
            first_booted_at=None if r.first_booted_at is None else int(r.first_booted_at),
            last_booted_at=None if r.last_booted_at is None else int(r.last_booted_at),
        )
        for r in rows
    ]
    out.sort(key=lambda t: (-t.crash_rate, -t.boots, t.previous_release or "", t.release, t.kind))
    return out
