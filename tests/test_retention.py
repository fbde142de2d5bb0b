"""Retention by count, age and bytes; the boot being ingested always stays."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from khod.cli import khoctl
from khod.cli.common import run_main
from khod.fleet.sync import sync
from khod.ingest.steps import IngestOptions, ingest_boot
from khod.paths import HostPaths
from khod.store.db import open_store
from khod.store.reads import load_boots, load_events
from khod.store.retention import apply_retention
from khod.store.schema import blobs, pstore_records
from tests import variants
from tests.conftest import FIXTURES, SysrootFactory

T0 = 1795481000
MACHINE_KHO = (FIXTURES / "pstore-kho/step1/etc/machine-id").read_text().strip()


def booter(sysroot: SysrootFactory, db_url: str) -> Callable[[int, int], int]:
    """boot(i, btime): ingest boot i of one machine, with a 27 KB pstore record."""
    base = sysroot("pstore-kho/step1")
    variants.remove(base, "sys/kernel/debug/kho/in/sub_fdts/pstore-kho")
    store = open_store(db_url)

    def boot(i: int, btime: int) -> int:
        root = base.parent / f"b{i}"
        shutil.copytree(base, root)
        variants.replace(
            root, "proc/sys/kernel/random/boot_id", f"00000000-0000-4000-8000-{i:012d}\n".encode()
        )
        variants.replace(root, "proc/stat", f"btime {btime}\n".encode())
        variants.replace(
            root,
            "sys/fs/pstore/dmesg-kho-0",
            (base / "sys/fs/pstore/dmesg-kho-0").read_bytes() + b"%d" % i,
        )
        return ingest_boot(HostPaths(root), store, IngestOptions())[1].boot_pk

    return boot


def seed(sysroot: SysrootFactory, db_url: str, n: int) -> tuple[str, list[int]]:
    """n boots of one machine, one day apart."""
    boot = booter(sysroot, db_url)
    return MACHINE_KHO, [boot(i, T0 + i * 86400) for i in range(n)]


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


# --- dedupe outlives retention; owned records wait for their export ---

PSTORE = "sys/fs/pstore"
ARCHIVE = "var/lib/systemd/pstore"
MACHINE = "84ce2d5daaed6b971052fc40dfcd0a30"


def next_boot(prev: Path, n: int) -> Path:
    """The next boot of the same machine: a new boot id, a later btime, the same archive."""
    root = prev.parent / f"next{n}"
    shutil.copytree(prev, root)
    variants.replace(
        root, "proc/sys/kernel/random/boot_id", f"00000000-0000-4000-8000-{n:012d}\n".encode()
    )
    variants.replace(root, "proc/stat", f"btime {1795490000 + n * 100}\n".encode())
    for f in (root / PSTORE).iterdir():
        f.unlink()
    return root


def history(db_url: str, capsys: pytest.CaptureFixture[str]) -> list[tuple[str, int]]:
    capsys.readouterr()
    assert run_main("khoctl", khoctl.main, ["history", "--json", "--all", "--db", db_url]) == 0
    return [(r["boot_id"][-2:], r["pstore_records"]) for r in json.loads(capsys.readouterr().out)]


def test_archived_records_of_a_deleted_boot_do_not_come_back(
    sysroot: SysrootFactory, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(db_url)
    ingest_boot(HostPaths(sysroot("pstore/step0")), store, IngestOptions())
    ingest_boot(HostPaths(sysroot("pstore/step1")), store, IngestOptions())
    crashed = sysroot("pstore/step0-boot2")  # the Panic of step1, moved to the archive
    (crashed / ARCHIVE).mkdir(parents=True)
    for f in sorted((crashed / PSTORE).iterdir()):
        shutil.move(f, crashed / ARCHIVE / f.name)
    assert ingest_boot(HostPaths(crashed), store, IngestOptions())[1].new_pstore == 4
    b4 = next_boot(crashed, 4)
    _, res, _ = ingest_boot(HostPaths(b4), store, IngestOptions())
    assert res.new_pstore == 0  # still in the store: seen
    assert apply_retention(store, MACHINE, res.boot_pk, max_boots=1, max_age=0, max_bytes=0) == 3
    # the archive keeps its copies (14 days): the next boot must not take them for new
    _, res, _ = ingest_boot(HostPaths(next_boot(b4, 5)), store, IngestOptions())
    assert res.new_pstore == 0
    assert history(db_url, capsys) == [("05", 0), ("04", 0)]
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(pstore_records)).scalar() == 0


def test_owned_records_are_kept_until_synced(
    sysroot: SysrootFactory, db_url: str, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --own-pstore the store holds the only copy: count and byte limits wait for
    the export; age retention (the policy) does not."""
    store = open_store(db_url)
    ingest_boot(HostPaths(sysroot("pstore/step0")), store, IngestOptions())
    owned = sysroot("pstore/step1")
    _, _, later = ingest_boot(HostPaths(owned), store, IngestOptions(own_pstore=True))
    assert {e.kind for e in later} == {"pstore-unlinked"}
    _, res, _ = ingest_boot(HostPaths(next_boot(owned, 3)), store, IngestOptions())
    assert apply_retention(store, MACHINE, res.boot_pk, max_boots=1, max_age=0, max_bytes=1) == 1
    assert history(db_url, capsys) == [("03", 0), ("7b", 3)]  # step1 (6d78f400-...7b) kept
    sync(store, open_store(sqlite_url))
    assert apply_retention(store, MACHINE, res.boot_pk, max_boots=1, max_age=0, max_bytes=0) == 1
    assert history(db_url, capsys) == [("03", 0)]
    assert [b.boot_id for b in load_boots(open_store(sqlite_url))][-1].endswith("7b")


def test_owned_records_are_kept_until_exported(
    sysroot: SysrootFactory, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(db_url)
    owned = sysroot("pstore/step1")
    ingest_boot(HostPaths(owned), store, IngestOptions(own_pstore=True))
    _, res, _ = ingest_boot(HostPaths(next_boot(owned, 3)), store, IngestOptions())
    assert apply_retention(store, MACHINE, res.boot_pk, max_boots=1, max_age=0, max_bytes=0) == 0
    out = tmp_path / "export.jsonl"
    assert run_main("khoctl", khoctl.main, ["export", "-o", str(out), "--db", db_url]) == 0
    assert apply_retention(store, MACHINE, res.boot_pk, max_boots=1, max_age=0, max_bytes=0) == 1
    assert history(db_url, capsys) == [("03", 0)]
    assert sum('"object":"pstore"' in line for line in out.read_text().splitlines()) == 3


# --- age against a clock the records contradict ---

YEAR = 365 * 86400
DAY = 86400


def by_age(db_url: str, machine: str, keep: int, now: float, max_age: int = 3 * DAY) -> int:
    return apply_retention(
        open_store(db_url), machine, keep, max_boots=0, max_age=max_age, max_bytes=0, now=now
    )


def retention_events(db_url: str, pk: int) -> list[tuple[str, str]]:
    return [
        (e["kind"], e["message"])
        for e in load_events(open_store(db_url), pk)
        if e["kind"].startswith("retention")
    ]


def test_a_clock_years_ahead_deletes_nothing_by_age(sysroot: SysrootFactory, db_url: str) -> None:
    machine, boot = MACHINE_KHO, booter(sysroot, db_url)
    pks = [boot(i, T0 + i * DAY) for i in range(5)]
    ahead = T0 + 5 * YEAR
    pks.append(boot(5, ahead))
    assert by_age(db_url, machine, pks[-1], now=ahead + 60) == 0
    assert remaining(db_url) == ["05", "04", "03", "02", "01", "00"]
    [(kind, message)] = retention_events(db_url, pks[-1])
    assert kind == "retention-clock-ahead"
    assert "1821 days ahead of the newest recorded boot" in message
    # the next boot's clock is right again: what is old by it goes, not the whole history
    pks.append(boot(6, T0 + 5 * DAY))
    assert by_age(db_url, machine, pks[-1], now=T0 + 5 * DAY + 60) == 3
    assert remaining(db_url) == ["05", "06", "04", "03"]


def test_a_clock_years_behind_ages_against_the_newest_record(
    sysroot: SysrootFactory, db_url: str
) -> None:
    machine, boot = MACHINE_KHO, booter(sysroot, db_url)
    pks = [boot(i, T0 + i * DAY) for i in range(5)]
    behind = T0 - 5 * YEAR
    pks.append(boot(5, behind))
    # age measured against the newest recorded boot (T0 + 4 days): boot 0 is old
    assert by_age(db_url, machine, pks[-1], now=behind + 60) == 1
    assert remaining(db_url) == ["04", "03", "02", "01", "05"]
    [(kind, _)] = retention_events(db_url, pks[-1])
    assert kind == "retention-clock-behind"
    # the boot recorded with the clock behind is as old as the boot before it, not years
    pks.append(boot(6, T0 + 5 * DAY))
    assert by_age(db_url, machine, pks[-1], now=T0 + 5 * DAY + 60) == 2  # boots 1 and 2
    assert remaining(db_url) == ["06", "04", "03", "05"]


def attempt_totals(db_url: str, root: Path) -> dict[str, float]:
    """khod_kexec_attempts_total as the daemon serves it for the boot at ``root``."""
    from prometheus_client.parser import text_string_to_metric_families

    from khod.ingest.snapshot import compute_snapshot
    from khod.metrics import SnapshotCollector, exposition, make_registry

    machine = (root / "etc/machine-id").read_text().strip()
    boot_id = (root / "proc/sys/kernel/random/boot_id").read_text().strip()
    store = open_store(db_url)
    snap = compute_snapshot(store, machine, boot_id, ingested_at=0.0, duration=0.0)
    store.dispose()
    c = SnapshotCollector()
    c.set(snap)
    text = exposition(make_registry(c)).decode()
    (fam,) = [f for f in text_string_to_metric_families(text) if f.name == "khod_kexec_attempts"]
    return {s.labels["verdict"]: s.value for s in fam.samples if s.name.endswith("_total")}


def test_retention_takes_nothing_from_the_attempts_counter(
    sysroot: SysrootFactory, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A counter never goes down: deleting old attempts with their boots leaves
    khod_kexec_attempts_total where it was (Prometheus would read a reset, and
    KhodKexecNotLanding fire on it)."""
    from khod.cli import khod_main

    roots = [sysroot(f"pstore-kho/step{i}") for i in range(4)]
    for i, root in enumerate(roots):
        argv = ["--sysroot", str(root), "--db", db_url]
        assert run_main("khod", khod_main.main, ["--once", *argv]) == 0
        if i < len(roots) - 1:
            assert run_main("khoctl", khoctl.main, ["record-kexec", *argv]) == 0
    before = attempt_totals(db_url, roots[-1])
    assert before["landed"] == 3
    argv = ["--once", "--max-boots", "2", "--sysroot", str(roots[-1]), "--db", db_url]
    assert run_main("khod", khod_main.main, argv) == 0
    assert "removed 2 old boots" in capsys.readouterr().err
    after = attempt_totals(db_url, roots[-1])
    assert after == before
