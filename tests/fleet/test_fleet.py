"""Fleet scale: export and import, sync to the fleet database, the transition report.
Every test taking db_url runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import gzip
import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from khod.cli import khoctl, khod_main
from khod.cli.common import run_main
from khod.fleet.format import VERSION
from khod.store.db import open_store
from khod.store.schema import blobs, boots, events, kexec_attempts, pstore_records
from tests import daemon_helpers, pgserver
from tests.builders import Host, boot_row, pstore_row, write_export
from tests.conftest import FIXTURES, SysrootFactory

CHAIN = ["pstore-kho/step0", "pstore-kho/step1", "pstore-kho/step2", "pstore-kho/step3"]
OTHERS = ["kexec1/step0", "kexec1/step1", "pstore/step0", "pstore/step0-boot2"]
TABLES = {"boot": boots, "blob": blobs, "event": events, "pstore": pstore_records}


def ctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = run_main("khoctl", khoctl.main, list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def host_store(sysroot: SysrootFactory, url: str, steps: list[str]) -> None:
    for step in steps:
        root = sysroot(step)
        assert Host(root, url).once().rc == 0


def table_counts(url: str) -> dict[str, int]:
    store = open_store(url)
    with store.engine.connect() as conn:
        out = {
            k: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for k, t in TABLES.items()
        }
        out["attempt"] = conn.execute(select(func.count()).select_from(kexec_attempts)).scalar_one()
    store.dispose()
    return out


def content(url: str) -> dict[str, Any]:
    """What a store holds, without its row ids: comparable between stores."""
    store = open_store(url)
    with store.engine.connect() as conn:
        boot_ids = {
            pk: (m, b)
            for pk, m, b in conn.execute(select(boots.c.id, boots.c.machine_id, boots.c.boot_id))
        }
        out: dict[str, Any] = {
            "boots": sorted(
                (
                    r["machine_id"],
                    r["boot_id"],
                    r["release"],
                    r["kind"],
                    r["previous_release"],
                    r["kexec_count"],
                    r["previous_release_raw"],
                    json.dumps(r["subtrees"]),
                )
                for r in conn.execute(select(boots)).mappings()
            ),
            "blobs": sorted(
                (boot_ids[r["boot_pk"]], r["direction"], r["name"], r["data"])
                for r in conn.execute(select(blobs)).mappings()
            ),
            "events": sorted(
                (boot_ids[r["boot_pk"]], r["fingerprint"], r["message"], r["origin"] or "")
                # events of no boot are the store's own (an import's refused lines)
                for r in conn.execute(
                    select(events).where(events.c.boot_pk.is_not(None))
                ).mappings()
            ),
            "pstore": sorted(
                (
                    r["machine_id"],
                    r["sha256"],
                    boot_ids[r["collected_by"]],
                    boot_ids.get(r["describes"]),
                    r["raw"],
                    r["text"],
                    r["reason"],
                )
                for r in conn.execute(select(pstore_records)).mappings()
            ),
        }
    store.dispose()
    return out


# --- export and import ------------------------------------------------------------


def test_export_import_round_trip_is_exact_and_idempotent(
    sysroot: SysrootFactory,
    sqlite_url: str,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host_store(sysroot, sqlite_url, CHAIN + OTHERS)
    dump = tmp_path / "fleet.jsonl.gz"
    rc, _, err = ctl(capsys, "export", "--db", sqlite_url, "-o", str(dump))
    assert rc == 0 and "exported 8 boots" in err
    lines = gzip.decompress(dump.read_bytes()).splitlines()
    head = json.loads(lines[0])
    assert (head["object"], head["format"], head["version"]) == ("header", "khod-export", VERSION)
    kinds = [json.loads(x)["object"] for x in lines[1:]]
    assert kinds == sorted(kinds, key=["boot", "blob", "event", "pstore", "attempt"].index)

    rc, out, _ = ctl(capsys, "import", str(dump), "--db", db_url, "--json")
    first = json.loads(out)
    assert rc == 0 and first["read"]["boot"] == 8 and first["new"]["boot"] == 8
    # PostgreSQL takes a clean file in bulk (in SQL); SQLite line by line
    bulk = db_url.startswith("postgresql")
    assert first["chunks"] == {"bulk": int(bulk), "line_by_line": int(not bulk)}
    assert first["new"]["pstore"] == first["read"]["pstore"] > 0
    assert content(db_url) == content(sqlite_url)

    rc, out, _ = ctl(capsys, "import", str(dump), "--db", db_url, "--json")
    again = json.loads(out)
    assert rc == 0 and again["read"] == first["read"]
    assert set(again["new"].values()) == {0}
    assert table_counts(db_url) == table_counts(sqlite_url)


def test_export_since_takes_boots_after_a_time(
    sysroot: SysrootFactory, sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host_store(sysroot, sqlite_url, CHAIN)
    store = open_store(sqlite_url)
    with store.engine.connect() as conn:
        times = sorted(conn.execute(select(boots.c.booted_at)).scalars())
    store.dispose()
    rc, out, _ = ctl(capsys, "export", "--db", sqlite_url, "--since", f"@{times[2]}")
    objs = [json.loads(x) for x in out.splitlines()[1:]]
    assert rc == 0
    assert sorted(o["booted_at"] for o in objs if o["object"] == "boot") == times[2:]
    exported = {o["boot_id"] for o in objs if o["object"] == "boot"}
    assert {o["collected_by"] for o in objs if o["object"] == "pstore"} <= exported


def test_bad_import_lines_are_skipped_one_line_each(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = boot_row("a" * 32, "b-1", "7.3.4", None, 1000)
    bad_b64 = pstore_row("a" * 32, "b-1", None, "Panic") | {"raw": "!!not base64!!"}
    f = tmp_path / "x.jsonl"
    write_export(
        f,
        [
            good,
            {"object": "boot"},
            {"object": "kernel"},
            good | {"kexec_count": 2**40},
            good | {"boot_id": "x" * 100},
            bad_b64,
            pstore_row("a" * 32, "no-such-boot", None, "Panic"),
        ],
    )
    with f.open("a") as fh:
        fh.write("{not json\n[1,2]\n")
    rc, out, err = ctl(capsys, "import", str(f), "--db", db_url)
    assert rc == 1
    lines = err.splitlines()
    assert lines[0].startswith(f"khoctl: warning: {f}:3: boot: missing boot_id, cmdline, ")
    assert any(":4: unknown object 'kernel'" in x for x in lines)
    assert any(":5: kexec_count: integer out of range" in x for x in lines)
    assert any(":6: boot_id: longer than 64 characters" in x for x in lines)
    assert any(":7: raw: not valid base64" in x for x in lines)
    assert any(":9: not JSON" in x for x in lines)
    assert any(":10: not a JSON object" in x for x in lines)
    assert all("Traceback" not in x for x in lines)
    assert "1 rows skipped: their boot is in neither" in out and "7 bad lines skipped" in out
    # on PostgreSQL too, a chunk with bad lines is checked line by line, naming them
    assert table_counts(db_url)["boot"] == 1  # the good line is in


@pytest.mark.parametrize(
    ("first", "why"),
    [
        ('{"object": "boot"}', "not a khod export"),
        ('{"object": "header", "format": "khod-export", "version": 2}', "version 2 is newer"),
        ("\x00\x01garbage", "not a khod export"),
    ],
)
def test_foreign_or_newer_files_are_refused(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], first: str, why: str
) -> None:
    f = tmp_path / "x.jsonl"
    f.write_text(first + "\n")
    rc, _, err = ctl(capsys, "import", str(f), "--db", db_url)
    assert rc == 1 and err.count("\n") == 1 and why in err and err.startswith("khoctl: error: ")


def _import(args: tuple[str, str]) -> int:
    return run_main("khoctl", khoctl.main, ["import", args[1], "--db", args[0], "--quiet"])


def test_concurrent_imports_of_the_same_file_store_each_row_once(
    sysroot: SysrootFactory, sqlite_url: str, db_url: str, tmp_path: Path
) -> None:
    host_store(sysroot, sqlite_url, CHAIN + OTHERS)
    dump = tmp_path / "x.jsonl"
    assert run_main("khoctl", khoctl.main, ["export", "--db", sqlite_url, "-o", str(dump)]) == 0
    open_store(db_url).dispose()  # schema first: the test is about rows
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_import, [(db_url, str(dump))] * 4) == [0] * 4
    assert table_counts(db_url) == table_counts(sqlite_url)


# --- the transition report ------------------------------------------------------


def small_fleet() -> list[dict[str, Any]]:
    """Three hosts, worked out by hand:

    A -> B: h1 (boot 1), h2 (boots 1 and 3): 3 boots, 2 hosts. h1's boot 1 panicked
        (a 2-part dump: one crash), h2's boot 3 oopsed then panicked (one crash): 2/3.
    B -> A: h2 (boot 2), h3 (boot 1): 2 boots, 2 hosts, h3's Shutdown record is no
        crash: 0/2.
    A -> A: h3 (boot 2): 1 boot, crashed (Oops): 1/1.
    Cold boots (A on h1, h2; B on h3): h3's cold boot left an Oops: baseline only.
    Boot h1-2 (cold, after the panic) found the dump: it is not a transition.
    """
    h1, h2, h3 = "1" * 32, "2" * 32, "3" * 32
    t = 1_790_000_000
    return [
        boot_row(h1, "h1-0", "A", None, t),
        boot_row(h1, "h1-1", "B", "A", t + 100),
        boot_row(h1, "h1-2", "B", None, t + 200),
        boot_row(h2, "h2-0", "A", None, t),
        boot_row(h2, "h2-1", "B", "A", t + 100),
        boot_row(h2, "h2-2", "A", "B", t + 200),
        boot_row(h2, "h2-3", "B", "A", t + 300),
        boot_row(h2, "h2-4", "B", None, t + 400),
        boot_row(h3, "h3-0", "B", None, t),
        boot_row(h3, "h3-1", "A", "B", t + 100),
        boot_row(h3, "h3-2", "A", "A", t + 200),
        boot_row(h3, "h3-3", "A", None, t + 300),
        pstore_row(h1, "h1-2", "h1-1", "Panic", part=1),
        pstore_row(h1, "h1-2", "h1-1", "Panic", part=2),
        pstore_row(h2, "h2-4", "h2-3", "Oops"),
        pstore_row(h2, "h2-4", "h2-3", "Panic"),
        pstore_row(h3, "h3-2", "h3-1", "Shutdown"),
        pstore_row(h3, "h3-3", "h3-2", "Oops"),
        pstore_row(h3, "h3-1", "h3-0", "Oops"),
    ]


def test_report_transitions_matches_the_hand_computed_fleet(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write_export(tmp_path / "fleet.jsonl", small_fleet())
    assert ctl(capsys, "import", str(f), "--db", db_url)[0] == 0
    rc, out, _ = ctl(capsys, "report", "transitions", "--db", db_url, "--json")
    assert rc == 0
    got = [
        (r["previous_release"], r["release"], r["boots"], r["hosts"], r["crashes"])
        for r in json.loads(out)
    ]
    assert got == [("A", "A", 1, 1, 1), ("A", "B", 3, 2, 2), ("B", "A", 2, 2, 0)]
    rates = [r["crash_rate"] for r in json.loads(out)]
    assert rates == [1.0, pytest.approx(2 / 3), 0.0]

    rc, out, _ = ctl(capsys, "report", "transitions", "--db", db_url, "--json", "--include-cold")
    cold = {r["release"]: r for r in json.loads(out) if r["previous_release"] is None}
    assert (cold["A"]["boots"], cold["A"]["crashes"]) == (3, 0)  # h1-0, h2-0, h3-3
    assert (cold["B"]["boots"], cold["B"]["crashes"]) == (3, 1)  # h1-2, h2-4, h3-0 (Oops)

    since = "@1790000150"  # drops the boots at t+100
    rc, out, _ = ctl(capsys, "report", "transitions", "--db", db_url, "--json", "--since", since)
    recent = [
        (r["previous_release"], r["release"], r["boots"], r["crashes"]) for r in json.loads(out)
    ]
    assert recent == [("A", "A", 1, 1), ("A", "B", 1, 1), ("B", "A", 1, 0)]

    prom = tmp_path / "t.prom"
    rc, out, _ = ctl(
        capsys,
        "report",
        "transitions",
        "--db",
        db_url,
        "--textfile",
        str(prom),
        "--bad-rate",
        "0.5",
        "--bad-min-boots",
        "2",
    )
    assert rc == 0 and out.splitlines()[0].split() == [
        "PREVIOUS_RELEASE",
        "RELEASE",
        "BOOTS",
        "OBSERVED",
        "HOSTS",
        "HOSTS_AFFECTED",
        "CRASHES",
        "CRASH_RATE",
    ]
    # 3 boots on 2 hosts, 2 crashed on 2 hosts
    assert out.splitlines()[2].split() == ["A", "B", "3", "3", "2", "2", "2", "66.67%"]
    text = prom.read_text()
    assert 'khod_fleet_transition_bad{previous_release="A",release="B"} 1.0' in text
    # A -> A crashed every time but once: below --bad-min-boots
    assert 'khod_fleet_transition_bad{previous_release="A",release="A"} 0.0' in text
    assert 'khod_fleet_transition_crash_rate{previous_release="B",release="A"} 0.0' in text


def test_report_on_real_captures(
    sysroot: SysrootFactory, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    host_store(sysroot, db_url, CHAIN)
    rc, out, _ = ctl(capsys, "report", "transitions", "--db", db_url, "--json")
    assert rc == 0
    (row,) = json.loads(out)
    # the chain kexecs 7.3.4-khlab-pk into itself three times; its records are Shutdowns
    assert (row["previous_release"], row["release"], row["boots"], row["hosts"]) == (
        "7.3.4-khlab-pk",
        "7.3.4-khlab-pk",
        3,
        1,
    )
    assert row["crashes"] == 0


# --- sync ------------------------------------------------------------------------


def test_sync_sends_only_what_is_new(
    sysroot: SysrootFactory, sqlite_url: str, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    host_store(sysroot, sqlite_url, CHAIN[:2])
    rc, out, _ = ctl(capsys, "sync", "--db", sqlite_url, "--to", db_url, "--json")
    first = json.loads(out)
    assert rc == 0 and first["new"]["boot"] == 2
    rc, out, _ = ctl(capsys, "sync", "--db", sqlite_url, "--to", db_url, "--json")
    assert rc == 0 and json.loads(out)["sent"] == {}  # nothing past the watermarks
    host_store(sysroot, sqlite_url, CHAIN[2:])
    rc, out, _ = ctl(capsys, "sync", "--db", sqlite_url, "--to", db_url, "--json")
    assert rc == 0 and json.loads(out)["new"]["boot"] == 2 == json.loads(out)["sent"]["boot"]
    assert content(db_url) == content(sqlite_url)
    rc, out, _ = ctl(capsys, "sync", "--db", sqlite_url, "--to", db_url, "--full", "--json")
    assert (
        rc == 0
        and json.loads(out)["sent"]["boot"] == 4
        and set(json.loads(out)["new"].values()) == {0}
    )


def test_sync_survives_the_fleet_database_going_away(
    sysroot: SysrootFactory, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pgserver.running_server() as pg:
        fleet = pg.url(pg.create_database())
        host_store(sysroot, sqlite_url, CHAIN[:2])
        assert ctl(capsys, "sync", "--db", sqlite_url, "--to", fleet)[0] == 0
        pg.stop()
        host_store(sysroot, sqlite_url, CHAIN[2:])
        rc, out, err = ctl(capsys, "sync", "--db", sqlite_url, "--to", fleet)
        assert rc == 1 and out == "" and err.count("\n") == 1
        assert err.startswith("khoctl: error: cannot connect to database postgresql+psycopg://")
        assert "Connection refused" in err
        pg.start()
        rc, out, _ = ctl(capsys, "sync", "--db", sqlite_url, "--to", fleet, "--json")
        assert rc == 0 and json.loads(out)["new"]["boot"] == 2
        assert content(fleet) == content(sqlite_url)  # nothing lost, nothing doubled


def test_attempt_verdicts_follow_the_attempt_to_the_fleet(
    sysroot: SysrootFactory, sqlite_url: str, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An attempt synced while open gets its verdict in the fleet database later."""
    root = sysroot("kexec1/step0")
    assert Host(root, sqlite_url).once().rc == 0
    rc = run_main(
        "khoctl",
        khoctl.main,
        ["record-kexec", "--sysroot", str(root), "--db", sqlite_url],
    )
    assert rc == 0
    assert ctl(capsys, "sync", "--db", sqlite_url, "--to", db_url)[0] == 0
    host_store(sysroot, sqlite_url, ["kexec1/step1"])
    assert ctl(capsys, "sync", "--db", sqlite_url, "--to", db_url)[0] == 0
    store = open_store(db_url)
    with store.engine.connect() as conn:
        (verdict,) = conn.execute(select(kexec_attempts.c.verdict)).scalars().all()
    store.dispose()
    assert verdict == "landed"
    assert FIXTURES.exists()


def test_syncs_with_nothing_new_lose_no_attempt(
    sysroot: SysrootFactory, sqlite_url: str, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Syncing again and again with nothing new moves no watermark: the attempt
    recorded after them still reaches the fleet, and so does every row."""
    roots = [sysroot(step) for step in CHAIN]

    def sync3() -> None:
        for _ in range(3):
            assert ctl(capsys, "sync", "--db", sqlite_url, "--to", db_url)[0] == 0

    for i, root in enumerate(roots):
        argv = ["--sysroot", str(root), "--db", sqlite_url]
        assert run_main("khod", khod_main.main, ["--once", *argv]) == 0
        sync3()
        if i < len(roots) - 1:
            assert ctl(capsys, "record-kexec", *argv)[0] == 0
            sync3()
    assert ctl(capsys, "record-kexec", "--sysroot", str(roots[-1]), "--db", sqlite_url)[0] == 0
    rc, out, _ = ctl(capsys, "sync", "--db", sqlite_url, "--to", db_url, "--json")
    assert rc == 0 and json.loads(out)["new"].get("attempt") == 1, out
    assert table_counts(db_url) == table_counts(sqlite_url)
    assert table_counts(db_url)["attempt"] == 4
    assert content(db_url) == content(sqlite_url)


def kernel_sized(sysroot: SysrootFactory) -> Path:
    """pstore-kho/step1 as a kernel may show it: kexec_count 2**31 (a u32) in the
    metadata, a dmesg record counted Oops#3000000000 (10 digits)."""
    from tests import variants

    root = sysroot("pstore-kho/step1")
    meta = "sys/kernel/debug/kho/in/sub_fdts/kexec-metadata"
    real = (root / meta).read_bytes()
    variants.replace(root, meta, real[:69] + (2**31).to_bytes(4, "little") + real[73:])
    rec = "sys/fs/pstore/dmesg-kho-0"
    data = (root / rec).read_bytes()
    assert data.startswith(b"Shutdown#1 Part1\n")
    variants.replace(root, rec, b"Oops#3000000000 Part1\n" + data.split(b"\n", 1)[1])
    return root


def kernel_sized_values(url: str) -> tuple[list[Any], list[Any]]:
    store = open_store(url)
    with store.engine.connect() as conn:
        counts = sorted(conn.execute(select(boots.c.kexec_count)).scalars(), key=str)
        oops = conn.execute(
            select(pstore_records.c.count).where(pstore_records.c.reason == "Oops")
        ).scalars()
        out = (counts, list(oops))
    store.dispose()
    return out


def test_values_the_kernel_allows_fit_every_store(
    sysroot: SysrootFactory,
    sqlite_url: str,
    db_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A u32 kexec_count past 2**31 and a 10-digit pstore count: khod --once records
    them, export and import carry them, sync sends them and the boots after them."""
    pg = db_url.startswith("postgresql")

    def fresh(name: str) -> str:
        if pg:
            server: pgserver.PostgresServer = request.getfixturevalue("pg_server")
            return server.url(server.create_database())
        return f"sqlite:///{tmp_path / name / 'khod.db'}"

    root = kernel_sized(sysroot)
    for url in (sqlite_url, db_url):
        argv = ["--once", "--sysroot", str(root), "--db", url]
        rc = run_main("khod", khod_main.main, argv)
        assert rc == 0, capsys.readouterr().err
        assert kernel_sized_values(url) == ([2**31], [3000000000])
    dump = tmp_path / "host.jsonl"
    assert ctl(capsys, "export", "--db", sqlite_url, "-o", str(dump))[0] == 0
    imported = fresh("imported")
    rc, out, err = ctl(capsys, "import", str(dump), "--db", imported, "--json")
    assert rc == 0, err
    assert json.loads(out)["new"]["boot"] == 1, out
    assert content(imported) == content(sqlite_url)
    fleet = fresh("fleet")
    rc, out, err = ctl(capsys, "sync", "--db", sqlite_url, "--to", fleet, "--json")
    assert rc == 0, err
    host_store(sysroot, sqlite_url, ["pstore-kho/step2"])
    rc, out, err = ctl(capsys, "sync", "--db", sqlite_url, "--to", fleet, "--json")
    assert rc == 0 and json.loads(out)["new"]["boot"] == 1, out + err
    assert content(fleet) == content(sqlite_url)
    assert kernel_sized_values(fleet)[1] == [3000000000]


def _metric(text: str, name: str) -> float | None:
    """The sample of ``name`` (``name{labels}``: every series summed), None without one."""
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    ]
    return sum(values) if values else None


def test_the_daemon_pushes_to_the_fleet_and_retries_until_it_is_back(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    root = sysroot("kexec1/step1")
    with pgserver.running_server() as pg:
        fleet = pg.url(pg.create_database())
        pg.stop()  # the fleet database is down when the host boots
        conf = tmp_path / "khod.toml"
        conf.write_text(f'[sync]\nto = "{fleet}"\ninterval = "2s"\n')
        with daemon_helpers.running_daemon(root, tmp_path, "--config", str(conf)) as d:
            d.wait_for("READY=1")
            deadline = time.monotonic() + 60
            while (_metric(d.scrape(), "khod_sync_failures_total") or 0) < 2:
                assert time.monotonic() < deadline, d.scrape()
                time.sleep(0.2)
            assert math.isnan(_metric(d.scrape(), "khod_sync_last_success_timestamp_seconds") or 0)
            assert (_metric(d.scrape(), 'khod_sync_failures_total{reason="unreachable"}') or 0) >= 2
            assert d.proc.poll() is None  # serving all along
            pg.start()
            while math.isnan(
                _metric(d.scrape(), "khod_sync_last_success_timestamp_seconds") or math.nan
            ):
                assert time.monotonic() < deadline, d.scrape()
                time.sleep(0.2)
            local = d.db
            d.proc.terminate()
            d.proc.wait(10)
            log = d.proc.stdout.read() if d.proc.stdout else ""
        assert "sync failed (1 in a row); retrying in 2s" in log
        assert "synced 1 boot (1 new)" in log
        assert content(fleet) == content(local)


def _mutants() -> list[tuple[str, dict[str, Any]]]:
    """Each field of each object type given a wrong (or a borderline right) value."""
    h = "a" * 32
    base = {
        "boot": boot_row(h, "b-0", "7.3.4", "7.3.3", 1000),
        "pstore": pstore_row(h, "b-0", "b-0", "Panic"),
        "blob": {
            "object": "blob", "machine_id": h, "boot_id": "b-0", "direction": "in",
            "name": "fdt", "size": 3, "sha256": "0" * 64, "data": "AAEC",
        },
        "event": {
            "object": "event", "machine_id": h, "boot_id": "b-0", "created_at": 1.5,
            "kind": "k", "source": "s", "severity": "info", "message": "m",
            "fingerprint": "f" * 64,
        },
        "attempt": {
            "object": "attempt", "uid": "u-1", "machine_id": h, "from_boot": "b-0",
            "created_at": 1.5, "source": "khoctl", "target_image": "/boot/vmlinuz",
            "target_release": "7.3.5", "target_abi": "kho-v4", "initrd": None,
            "cmdline": None, "checks": [{"name": "abi"}], "forced": False,
            "argv": [["kexec", "-e"]], "expected_previous_release": "7.3.4",
            "expected_kexec_count": 1, "verdict": "landed", "verdict_boot": "b-0",
            "verdict_detail": None,
        },
    }  # fmt: skip
    values: list[Any] = [None, "x", "", 7, -1, 3.0, 2**31, 2**63, 1.5, 1e300, True, [], {}, "AA=="]
    out = []
    for kind, obj in base.items():
        out.append((f"{kind}-as-is", obj))
        for key in obj:
            if key == "object":
                continue
            for v in values:
                out.append((f"{kind}.{key}={v!r}", obj | {key: v}))
            out.append((f"{kind}-without-{key}", {k: v for k, v in obj.items() if k != key}))
    nested: list[Any] = [
        [1], [None], [[1]], [[1, 2]], [[1, 2.0]], [[1, 2**63]], [[1, "2"]], [[1, 2, 3]],
        [{"name": "x"}], [{"name": "x", "size": 3.0}], [{"name": "x", "size": 2**64}],
        [{"name": 1, "size": 1}], [{"size": 1}], [{"name": "x", "size": None}], [["x"]],
    ]  # fmt: skip
    nested += [
        [{"name": ["x"], "size": 1}], [{"name": "x", "size": [1]}], [[{"name": "x"}]],
        [{"name": "x", "size": True}], [{"name": "x", "size": 1e300}], [[[1, 2]]], [[1, [2]]],
        [{"name": "x", "size": -(2**63)}], [[2**63 - 1, -(2**63)]], [[1, 2], "x"], [{}],
    ]  # fmt: skip
    for key in ("subtrees", "out_subtrees", "scratch"):
        for v in nested:
            out.append((f"boot.{key}={v!r}", base["boot"] | {key: v}))
    for key in ("checks", "argv"):
        for v in [*nested, [["a", "b"], []], [["a", 1]], [[["a"]]], ["a"], [{"a": 1}, 1]]:
            out.append((f"attempt.{key}={v!r}", base["attempt"] | {key: v}))
    return out


def test_bulk_path_refuses_exactly_what_the_line_path_refuses(
    pg_server: pgserver.PostgresServer,
) -> None:
    """khod.fleet.pgfast checks in SQL what format.validate checks in Python: for
    every mutant, both accept it or both refuse it."""
    from khod.fleet import format as fmt
    from khod.fleet import pgfast

    url = pg_server.url(pg_server.create_database())
    store = open_store(url)
    seed = boot_row("a" * 32, "b-0", "7.3.4", None, 1)
    with store.writer.begin() as conn:
        pgfast.load_chunk(conn, [json.dumps(seed).encode()])
    disagree = []
    mutants = _mutants()
    for name, obj in mutants:
        try:
            fmt.validate(obj)
            python_ok = True
        except fmt.BadObject:
            python_ok = False
        conn = store.writer.connect()
        tx = conn.begin()
        try:
            pgfast.load_chunk(conn, [json.dumps(obj).encode()])
            sql_ok = True
        except Exception:
            sql_ok = False
        finally:
            tx.rollback()
            conn.close()
        if python_ok != sql_ok:
            disagree.append((name, python_ok, sql_ok))
    store.dispose()
    assert len(mutants) > 500
    assert disagree == []


def stderr_on_a_terminal(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run ``argv`` with its standard error on a pseudo-terminal: what it printed there
    (progress lines are drawn on a terminal only), its standard output captured."""
    primary, secondary = os.openpty()
    try:
        r = subprocess.run(
            argv, stderr=secondary, stdout=subprocess.PIPE, text=True, check=False, timeout=120
        )
        os.close(secondary)
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(primary)
    return r, seen.decode()


def test_import_draws_a_progress_bar_on_a_terminal_only(
    sysroot: SysrootFactory, sqlite_url: str, db_url: str, tmp_path: Path
) -> None:
    host_store(sysroot, sqlite_url, CHAIN)
    dump = tmp_path / "x.jsonl"
    assert run_main("khoctl", khoctl.main, ["export", "--db", sqlite_url, "-o", str(dump)]) == 0
    khoctl_bin = str(Path(sys.executable).parent / "khoctl")
    r, text = stderr_on_a_terminal([khoctl_bin, "import", str(dump), "--db", db_url])
    assert r.returncode == 0 and r.stdout.startswith(
        "imported 4 boots (4 new), 26 blobs (26 new), 1 event (1 new), 3 pstore records (3 new)"
    )
    assert f"\r{dump} [" in text and "100%" in text and " rows, " in text
    assert text.endswith("\r\x1b[K")  # the bar is cleared at the end
    # not a terminal: no bar
    r = subprocess.run(
        [khoctl_bin, "import", str(dump), "--db", db_url],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert r.returncode == 0 and r.stderr == ""


def test_many_chunks_in_parallel_with_a_bad_one_in_the_middle(
    sysroot: SysrootFactory,
    sqlite_url: str,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Small chunks: on PostgreSQL two run at once; the boots are all in before any
    row that names them; the chunk holding a bad line is imported line by line."""
    from khod.fleet import stream

    monkeypatch.setattr(stream, "CHUNK_LINES", 3)
    host_store(sysroot, sqlite_url, CHAIN + OTHERS)
    dump = tmp_path / "x.jsonl"
    assert run_main("khoctl", khoctl.main, ["export", "--db", sqlite_url, "-o", str(dump)]) == 0
    lines = dump.read_text().splitlines(keepends=True)
    lines.insert(5, '{"object": "boot", "machine_id": 5}\n')  # line 6: in the 2nd chunk
    dump.write_text("".join(lines))
    rc, out, err = ctl(capsys, "import", str(dump), "--db", db_url, "--json")
    res = json.loads(out)
    assert rc == 1 and res["bad"] == 1 and f"{dump}:6: boot: missing boot_id" in err
    assert content(db_url) == content(sqlite_url)
    chunks = -(-(len(lines) - 1) // 3)
    if db_url.startswith("postgresql"):
        assert res["chunks"] == {"bulk": chunks - 1, "line_by_line": 1}
    else:
        assert res["chunks"] == {"bulk": 0, "line_by_line": chunks}


def _hold_boots_until_the_import_waits(url: str, ready: Any, done: Any) -> None:
    """Hold a lock on the boots table that lets readers through but blocks the next
    boot INSERT; once that INSERT waits (and any chunk running beside it has
    finished), release it. Runs in a thread beside the import."""
    store = open_store(url)
    with store.engine.connect() as lock, store.engine.connect() as watch:
        lock.exec_driver_sql("LOCK TABLE boots IN SHARE MODE")
        ready.set()
        me = lock.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        mine = (me, watch.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())

        def others() -> list[tuple[str | None, str | None]]:
            watch.rollback()
            rows = watch.exec_driver_sql(
                "SELECT state, wait_event_type FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> ALL(%(mine)s)",
                {"mine": list(mine)},
            ).all()
            return [(r[0], r[1]) for r in rows]

        while not done.is_set() and not any(w == "Lock" for _, w in others()):
            time.sleep(0.01)
        # the blocked chunk waits; a chunk beside it (if any) gets up to 3 s to finish
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not done.is_set():
            if any(s == "active" and w != "Lock" for s, w in others()):
                while any(s == "active" and w != "Lock" for s, w in others()):
                    time.sleep(0.01)
                break
            time.sleep(0.01)
        lock.rollback()
    store.dispose()


def test_a_chunk_that_ends_the_boots_is_in_before_the_next_chunk_runs(
    sysroot: SysrootFactory,
    sqlite_url: str,
    pg_server: pgserver.PostgresServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On PostgreSQL, a chunk holding the last boots and the first rows that name them
    is committed before the next chunk (rows of those boots) runs: nothing is lost."""
    import threading

    from khod.fleet import stream

    host_store(sysroot, sqlite_url, CHAIN)
    store = open_store(sqlite_url)
    with store.engine.connect() as conn:
        times = sorted(conn.execute(select(boots.c.booted_at)).scalars())
    store.dispose()
    dump = tmp_path / "x.jsonl"
    argv = ["export", "--db", sqlite_url, "--since", f"@{times[2]}", "-o", str(dump)]
    assert run_main("khoctl", khoctl.main, argv) == 0
    kinds = [json.loads(x)["object"] for x in dump.read_text().splitlines()[1:]]
    # chunks of 3 lines: the first holds both boots and a dependent row, the next
    # only rows of those boots
    assert kinds[:3] == ["boot", "boot", "blob"] and "boot" not in kinds[3:]
    monkeypatch.setattr(stream, "CHUNK_LINES", 3)

    line_url = f"sqlite:///{tmp_path / 'line' / 'khod.db'}"
    assert ctl(capsys, "import", str(dump), "--db", line_url)[0] == 0
    pg_url = pg_server.url(pg_server.create_database())
    open_store(pg_url).dispose()  # migrated before the lock is taken

    ready, done = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_boots_until_the_import_waits, args=(pg_url, ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        rc, out, err = ctl(capsys, "import", str(dump), "--db", pg_url, "--json")
    finally:
        done.set()
        holder.join()
    res = json.loads(out)
    assert rc == 0, err
    assert res["unknown_boot"] == 0
    assert res["new"] == res["read"]
    assert content(pg_url) == content(line_url)
    assert table_counts(pg_url) == table_counts(line_url)


def test_an_export_from_before_events_had_an_origin_still_imports(
    sysroot: SysrootFactory,
    sqlite_url: str,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host_store(sysroot, sqlite_url, CHAIN + OTHERS)
    dump = tmp_path / "x.jsonl"
    assert run_main("khoctl", khoctl.main, ["export", "--db", sqlite_url, "-o", str(dump)]) == 0
    lines = dump.read_text().splitlines()
    objs = [json.loads(x) for x in lines[1:]]
    assert {o["origin"] for o in objs if o["object"] == "event"} == {"kho"}
    old = [lines[0], *(json.dumps({k: v for k, v in o.items() if k != "origin"}) for o in objs)]
    dump.write_text("\n".join(old) + "\n")
    rc, out, err = ctl(capsys, "import", str(dump), "--db", db_url, "--json")
    res = json.loads(out)
    assert rc == 0, err
    assert res["new"]["event"] == res["read"]["event"] > 0 and res["unknown_boot"] == 0
    store = open_store(db_url)
    with store.engine.connect() as conn:
        assert set(conn.execute(select(events.c.origin)).scalars()) == {None}
    store.dispose()


def test_luo_and_loader_facts_travel_through_export_and_import(
    sysroot: SysrootFactory,
    sqlite_url: str,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The PostgreSQL bulk path (COPY) and the line path both carry the new columns."""
    from tests import variants
    from tests.parse.test_parse_luo import luo_ser

    kho = "sys/kernel/debug/kho"
    for step, luo, loader in (
        ("kexec1/step0", None, b"176\n"),
        ("kexec1/step1", luo_ser("luo-v5;block-v1", (1 << 63) - 1, sessions_pa=1), b"208\n"),
    ):
        root = sysroot(step)
        if luo is not None:
            variants.replace(root, f"{kho}/in/sub_fdts/LUO", luo)
        variants.replace(root, "proc/sys/kernel/bootloader_type", loader)
        argv = ["--once", "--sysroot", str(root), "--db", sqlite_url]
        assert run_main("khod", khod_main.main, argv) == 0
    dump = tmp_path / "fleet.jsonl"
    assert ctl(capsys, "export", "--db", sqlite_url, "-o", str(dump))[0] == 0
    rc, out, _ = ctl(capsys, "import", str(dump), "--db", db_url, "--json")
    assert rc == 0 and json.loads(out)["new"]["boot"] == 2
    cols = (boots.c.bootloader_type, boots.c.luo_compatible, boots.c.liveupdate_num)
    store = open_store(db_url)
    with store.engine.connect() as conn:
        got = conn.execute(select(*cols, boots.c.luo_sessions).order_by(boots.c.seq)).all()
    store.dispose()
    assert [tuple(r) for r in got] == [
        (0xB0, None, None, None),
        (0xD0, "luo-v5;block-v1", (1 << 63) - 1, True),
    ]


def test_an_export_from_before_the_luo_columns_still_imports(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = boot_row("m" * 32, "00000000-0000-4000-8000-000000000001", "7.3.4", None, 100)
    assert "liveupdate_num" not in old
    path = write_export(tmp_path / "old.jsonl", [old])
    rc, out, _ = ctl(capsys, "import", str(path), "--db", db_url, "--json")
    assert rc == 0 and json.loads(out)["new"]["boot"] == 1
    store = open_store(db_url)
    with store.engine.connect() as conn:
        row = conn.execute(select(boots.c.bootloader_type, boots.c.liveupdate_num)).one()
    store.dispose()
    assert tuple(row) == (None, None)


def test_kexecs_without_handover_and_refused_ones_from_a_known_release_are_its_transitions(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = "4" * 32
    t = 1_790_000_000
    objs = [
        boot_row(h, "h4-0", "A", None, t),
        boot_row(h, "h4-1", "B", "A", t + 100),  # a KHO handover
        {**boot_row(h, "h4-2", "B", "A", t + 200), "kind": "kexec-no-handover"},
        {**boot_row(h, "h4-3", "B", "A", t + 300), "kind": "kexec-rejected"},
        {**boot_row(h, "h4-4", "B", None, t + 400), "kind": "kexec-no-handover"},
    ]
    for o in objs[2:4]:
        o.update(metadata_source="attempt", kexec_count=0)
    f = write_export(tmp_path / "fleet.jsonl", objs)
    assert ctl(capsys, "import", str(f), "--db", db_url)[0] == 0
    rc, out, _ = ctl(capsys, "report", "transitions", "--db", db_url, "--json", "--include-cold")
    assert rc == 0
    rows = {(r["previous_release"], r["release"]): r for r in json.loads(out)}
    # A -> B is every boot through a kexec from A, with A's KHO handover or without one
    # (a fleet without KHO has only those); the kexec from nobody knows where is B's
    # baseline
    assert rows[("A", "B")]["boots"] == 3, rows
    assert rows[(None, "B")]["boots"] == 1, rows
    assert rows[(None, "A")]["boots"] == 1, rows
