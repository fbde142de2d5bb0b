"""Retention by count, age and bytes; the boot being ingested always stays."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

import khod.store.retention
from khod.cli import khoctl
from khod.cli.common import run_main
from khod.fleet.sync import sync
from khod.store.db import open_store
from khod.store.reads import load_boots
from khod.store.schema import blobs, pstore_records
from tests import variants
from tests.builders import Host, Out
from tests.conftest import HostFactory

T0 = 1795481000


NO_LIMITS = ("--max-boots", "0", "--max-age", "0", "--max-bytes", "0")


def limits(boots: int = 0, age: int = 0, size: int = 0) -> tuple[str, ...]:
    return ("--max-boots", str(boots), "--max-age", str(age), "--max-bytes", str(size))


def removed(r: Out) -> int:
    """How many old boots khod --once said its retention removed."""
    assert r.rc == 0, r.err
    m = re.search(r"retention: removed (\d+) old boots", r.err)
    return int(m.group(1)) if m else 0


def clock(monkeypatch: pytest.MonkeyPatch, now: float) -> None:
    """The time retention measures age against (the machine's clock cannot be moved
    years here)."""
    monkeypatch.setattr(khod.store.retention, "time", SimpleNamespace(time=lambda: now))


def booter(host: HostFactory, db_url: str) -> Callable[[int, int], Host]:
    """boot(i, btime): ingest boot i of one machine, with a 27 KB pstore record."""
    base = host("pstore-kho/step1", db_url, ingest=False)
    variants.remove(base.root, "sys/kernel/debug/kho/in/sub_fdts/pstore-kho")

    def boot(i: int, btime: int) -> Host:
        root = base.root.parent / f"b{i}"
        shutil.copytree(base.root, root)
        variants.replace(
            root, "proc/sys/kernel/random/boot_id", f"00000000-0000-4000-8000-{i:012d}\n".encode()
        )
        variants.replace(root, "proc/stat", f"btime {btime}\n".encode())
        variants.replace(
            root,
            "sys/fs/pstore/dmesg-kho-0",
            (base.root / "sys/fs/pstore/dmesg-kho-0").read_bytes() + b"%d" % i,
        )
        base.at(root).ingest(*NO_LIMITS)
        return base.at(root)

    return boot


def seed(host: HostFactory, db_url: str, n: int) -> list[Host]:
    """n boots of one machine, one day apart."""
    boot = booter(host, db_url)
    return [boot(i, T0 + i * 86400) for i in range(n)]


def remaining(db_url: str) -> list[str]:
    return [b.boot_id[-2:] for b in load_boots(open_store(db_url))]


def test_by_count(host: HostFactory, db_url: str) -> None:
    boots = seed(host, db_url, 6)
    assert removed(boots[-1].once(*limits(boots=3))) == 3
    assert remaining(db_url) == ["05", "04", "03"]


def test_by_age_keeps_the_current_boot(
    host: HostFactory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    boots = seed(host, db_url, 5)
    clock(monkeypatch, T0 + 10 * 86400)
    n = removed(boots[0].once(*limits(age=7 * 86400)))
    # boots 0..2 are older than 7 days; boot 0 is the one being ingested: kept
    assert n == 2 and remaining(db_url) == ["04", "03", "00"]


def test_by_bytes_and_the_rows_go_with_the_boot(host: HostFactory, db_url: str) -> None:
    boots = seed(host, db_url, 5)
    store = open_store(db_url)
    with store.engine.connect() as conn:
        per_boot = conn.execute(select(func.sum(blobs.c.size))).scalar_one() // 5 + (
            conn.execute(select(func.sum(pstore_records.c.size))).scalar_one() // 5
        )
    n = removed(boots[-1].once(*limits(size=int(int(per_boot) * 2.5))))
    assert n == 3 and remaining(db_url) == ["04", "03"]
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(pstore_records)).scalar() == 2
        assert conn.execute(select(func.count(func.distinct(blobs.c.boot_pk)))).scalar() == 2


def test_no_limits_delete_nothing(host: HostFactory, db_url: str) -> None:
    boots = seed(host, db_url, 3)
    assert removed(boots[-1].once(*NO_LIMITS)) == 0
    assert remaining(db_url) == ["02", "01", "00"]


# --- dedupe outlives retention; owned records wait for their export ---

PSTORE = "sys/fs/pstore"
ARCHIVE = "var/lib/systemd/pstore"


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
    host: HostFactory, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    step0 = host("pstore/step0", db_url)
    step0.at(host("pstore/step1", ingest=False).root).ingest(*NO_LIMITS)
    crashed = host("pstore/step0-boot2", ingest=False).root  # the Panic of step1, moved
    (crashed / ARCHIVE).mkdir(parents=True)  # to the archive
    for f in sorted((crashed / PSTORE).iterdir()):
        shutil.move(f, crashed / ARCHIVE / f.name)
    assert step0.at(crashed).ingest(*NO_LIMITS).new_pstore == 4
    b4 = next_boot(crashed, 4)
    r = step0.at(b4).once(*limits(boots=1))
    assert r.new_pstore == 0  # still in the store: seen
    assert removed(r) == 3
    # the archive keeps its copies (14 days): the next boot must not take them for new
    assert step0.at(next_boot(b4, 5)).ingest(*NO_LIMITS).new_pstore == 0
    assert history(db_url, capsys) == [("05", 0), ("04", 0)]
    store = open_store(db_url)
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(pstore_records)).scalar() == 0


def event_kinds(h: Host) -> set[str]:
    """The kinds of the events recorded with the boot at ``h.root`` (khoctl show)."""
    return {e["kind"] for e in h.khoctl_json("show")["events"]}


def test_owned_records_are_kept_until_synced(
    host: HostFactory, db_url: str, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --own-pstore the store holds the only copy: count and byte limits wait for
    the export; age retention (the policy) does not."""
    step0 = host("pstore/step0", db_url)
    owned = step0.at(host("pstore/step1", ingest=False).root)
    owned.ingest("--own-pstore", *NO_LIMITS)
    assert not any((owned.root / PSTORE).iterdir())
    assert "pstore-unlinked" in event_kinds(owned)
    assert removed(owned.at(next_boot(owned.root, 3)).once(*limits(boots=1, size=1))) == 1
    assert history(db_url, capsys) == [("03", 0), ("7b", 3)]  # step1 (6d78f400-...7b) kept
    store = open_store(db_url)
    sync(store, open_store(sqlite_url))
    assert removed(owned.at(owned.root.parent / "next3").once(*limits(boots=1))) == 1
    assert history(db_url, capsys) == [("03", 0)]
    assert [b.boot_id for b in load_boots(open_store(sqlite_url))][-1].endswith("7b")


def test_owned_records_are_kept_until_exported(
    host: HostFactory, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owned = host("pstore/step1", db_url, ingest=False)
    owned.ingest("--own-pstore", *NO_LIMITS)
    later = owned.at(next_boot(owned.root, 3))
    assert removed(later.once(*limits(boots=1))) == 0
    out = tmp_path / "export.jsonl"
    assert later.khoctl("export", "-o", str(out)).rc == 0
    assert removed(later.once(*limits(boots=1))) == 1
    assert history(db_url, capsys) == [("03", 0)]
    assert sum('"object":"pstore"' in line for line in out.read_text().splitlines()) == 3


# --- age against a clock the records contradict ---

YEAR = 365 * 86400
DAY = 86400


def by_age(h: Host, monkeypatch: pytest.MonkeyPatch, now: float, max_age: int = 3 * DAY) -> int:
    """khod --once at ``h.root`` (recorded or new) with the clock at ``now``: how many old
    boots age retention removed."""
    clock(monkeypatch, now)
    return removed(h.once(*limits(age=max_age)))


def retention_events(h: Host) -> list[tuple[str, str]]:
    return [
        (e["kind"], e["message"])
        for e in h.khoctl_json("show")["events"]
        if e["kind"].startswith("retention")
    ]


def test_a_clock_years_ahead_deletes_nothing_by_age(
    host: HostFactory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot = booter(host, db_url)
    for i in range(5):
        boot(i, T0 + i * DAY)
    ahead = T0 + 5 * YEAR
    current = boot(5, ahead)
    assert by_age(current, monkeypatch, now=ahead + 60) == 0
    assert remaining(db_url) == ["05", "04", "03", "02", "01", "00"]
    [(kind, message)] = retention_events(current)
    assert kind == "retention-clock-ahead"
    assert "1821 days ahead of the newest recorded boot" in message
    # the next boot's clock is right again: what is old by it goes, not the whole history
    current = boot(6, T0 + 5 * DAY)
    assert by_age(current, monkeypatch, now=T0 + 5 * DAY + 60) == 3
    assert remaining(db_url) == ["05", "06", "04", "03"]


def test_a_clock_years_behind_ages_against_the_newest_record(
    host: HostFactory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot = booter(host, db_url)
    for i in range(5):
        boot(i, T0 + i * DAY)
    behind = T0 - 5 * YEAR
    current = boot(5, behind)
    # age measured against the newest recorded boot (T0 + 4 days): boot 0 is old
    assert by_age(current, monkeypatch, now=behind + 60) == 1
    assert remaining(db_url) == ["04", "03", "02", "01", "05"]
    [(kind, _)] = retention_events(current)
    assert kind == "retention-clock-behind"
    # the boot recorded with the clock behind is as old as the boot before it, not years
    current = boot(6, T0 + 5 * DAY)
    assert by_age(current, monkeypatch, now=T0 + 5 * DAY + 60) == 2  # boots 1 and 2
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


def test_retention_takes_nothing_from_the_attempts_counter(host: HostFactory, db_url: str) -> None:
    """A counter never goes down: deleting old attempts with their boots leaves
    khod_kexec_attempts_total where it was (Prometheus would read a reset, and
    KhodKexecNotLanding fire on it)."""
    hosts = [host(f"pstore-kho/step{i}", db_url, ingest=False) for i in range(4)]
    for i, h in enumerate(hosts):
        h.ingest()
        if i < len(hosts) - 1:
            assert h.khoctl("record-kexec").rc == 0
    before = attempt_totals(db_url, hosts[-1].root)
    assert before["landed"] == 3
    r = hosts[-1].once("--max-boots", "2")
    assert r.rc == 0
    assert "removed 2 old boots" in r.err
    after = attempt_totals(db_url, hosts[-1].root)
    assert after == before
