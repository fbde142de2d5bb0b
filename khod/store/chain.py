"""A chain khod derives itself where the kernel hands none over (no kexec-metadata: a
kexec without KHO, into a kho=off kernel, a 7.0 kernel): previous_release is the release
of the boot recorded just before, kexec_count its count + 1, but only where it is shown
that no boot came between them: khoctl's own kexec attempt was made in that boot
(``attempt``), or the journal's boot before this one is that boot (``derived``).
Otherwise both stay unknown. The kernel's own figures always win."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select, update

from khod.observation import BootKind, BootObservation
from khod.parse.journal import same_boot
from khod.records import MetadataSource
from khod.store.schema import boots


@dataclass(frozen=True)
class Chain:
    previous_release: str
    kexec_count: int | None
    metadata_source: MetadataSource


def derive_chain(
    conn: Connection, obs: BootObservation, pk: int, prev_pk: int | None, *, attempted: bool
) -> Chain | None:
    """Fill the chain of boot ``pk`` (just saved) from boot ``prev_pk``, where allowed;
    ``attempted``: an attempt khoctl recorded in ``prev_pk`` was judged by this boot."""
    if prev_pk is None or obs.kind == BootKind.COLD or obs.previous_release is not None:
        return None
    prev = conn.execute(
        select(boots.c.boot_id, boots.c.release, boots.c.kexec_count).where(boots.c.id == prev_pk)
    ).one()
    journal = obs.journal_previous_boot
    if journal is not None and not same_boot(journal, prev.boot_id):
        # the journal names another boot before this one: one came between them,
        # unrecorded (an attempt in prev_pk shows only that prev_pk tried a kexec)
        return None
    if attempted:
        source = MetadataSource.ATTEMPT
    elif journal is not None:
        source = MetadataSource.DERIVED
    else:
        return None  # a boot may have come between them unrecorded: never guessed
    # the kernel gave no figures (a boot without a handover says 0: its outgoing count
    # restarts, but this boot is one kexec on from the one before)
    count = None if prev.kexec_count is None else prev.kexec_count + 1
    chain = Chain(prev.release, count, source)
    conn.execute(
        update(boots)
        .where(boots.c.id == pk)
        .values(
            previous_release=chain.previous_release,
            kexec_count=chain.kexec_count,
            metadata_source=chain.metadata_source,
        )
    )
    return chain
