"""Retention by count, age and bytes; the boot being ingested always stays."""

from __future__ import annotations

import shutil

from sqlalchemy import func, select

from khod.ingest import IngestOptions, ingest_boot
from khod.paths import HostPaths
from khod.store.boots import load_boots
from khod.store.db import open_store
from khod.store.retention import apply_retention
from khod.store.schema import blobs, pstore_records
from tests import variants
from tests.conftest import SysrootFactory

T0 = 1795481000


def seed(sysroot: SysrootFactory, db_url: str, n: int) -> tuple[str, list[int]]:
    """n boots of one machine, one day apart, each with a 27 KB pstore record."""
    base = sysroot("pstore-kho/step1")
    variants.remove(base, "sys/kernel/debug/kho/in/sub_fdts/pstore-kho")
    store = open_store(db_url)
    pks = []
    for i in range(n):
        root = base.parent / f"b{i}"
        shutil.copytree(base, root)
        variants.replace(
            root, "proc/sys/kernel/random/boot_id", f"00000000-0000-4000-8000-{i:012d}\n".encode()
        )
        variants.replace(root, "proc/stat", f"btime {T0 + i * 86400}\n".encode())
        variants.replace(
            root,
            "sys/fs/pstore/dmesg-kho-0",
            (base / "sys/fs/pstore/dmesg-kho-0").read_bytes() + b"%d" % i,
        )
        obs, res, _ = ingest_boot(HostPaths(root), store, IngestOptions())
        pks.append(res.boot_pk)
    return obs.machine_id, pks


def remaining(db_url: str) -> list[str]:
    return [b.boot_id[-2:] for b in load_boots(open_store(db_url))]


def test_by_count(sysroot: SysrootFactory, db_url: str) -> None:
    machine, pks = seed(sysroot, db_url, 6)
    n = apply_retention(open_store(db_url), machine, pks[-1], max_boots=3, max_age=0, max_bytes=0)
    assert n == 3 and remaining(db_url) == ["05", "04", "03"]


def test_by_age_keeps_the_current_boot(sysroot: SysrootFactory, db_url: str) -> None:
    machine, pks = seed(sysroot, db_url, 5)
    now = T0 + 10 * 86400
    n = apply_retention(
        open_store(db_url), machine, pks[0], max_boots=0, max_age=7 * 86400, max_bytes=0, now=now
    )
    # boots 0..2 are older than 7 days; boot 0 is the one being ingested: kept
    assert n == 2 and remaining(db_url) == ["04", "03", "00"]


def test_by_bytes_and_the_rows_go_with_the_boot(sysroot: SysrootFactory, db_url: str) -> None:
    machine, pks = seed(sysroot, db_url, 5)
    store = open_store(db_url)
    with store.engine.connect() as conn:
        per_boot = conn.execute(select(func.sum(blobs.c.size))).scalar_one() // 5 + (
            conn.execute(select(func.sum(pstore_records.c.size))).scalar_one() // 5
        )
    n = apply_retention(
        store, machine, pks[-1], max_boots=0, max_age=0, max_bytes=int(int(per_boot) * 2.5)
    )
    assert n == 3 and remaining(db_url) == ["04", "03"]
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(pstore_records)).scalar() == 2
        assert conn.execute(select(func.count(func.distinct(blobs.c.boot_pk)))).scalar() == 2


def test_no_limits_delete_nothing(sysroot: SysrootFactory, db_url: str) -> None:
    machine, pks = seed(sysroot, db_url, 3)
    assert (
        apply_retention(open_store(db_url), machine, pks[-1], max_boots=0, max_age=0, max_bytes=0)
        == 0
    )
