"""``btime`` in /proc/stat that is not a time: a clock set back below the uptime makes
the kernel print the wrapped u64 (``btime 18446744073709551586``); any value a datetime
cannot hold, and garbage. The boot is recorded with ``booted_at`` unknown and an event
saying why; every reader of ``booted_at`` copes with it unknown."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from khod.cli import khod_main
from khod.cli.common import run_main
from khod.ingest.snapshot import compute_snapshot
from khod.metrics import SnapshotCollector, exposition, make_registry
from khod.store.db import open_store
from tests import variants
from tests.conftest import SysrootFactory
from tests.fleet.test_fleet import ctl

MACHINE = "65f7426a2b95da889897ce107b775321"  # kexec1
STEP1_BOOT = "30341bb4-f2be-44ce-9dc1-bc1efbab050a"


def set_btime(root: Path, value: bytes) -> None:
    stat = (root / "proc/stat").read_bytes()
    lines = [b"btime " + value if ln.startswith(b"btime ") else ln for ln in stat.split(b"\n")]
    variants.replace(root, "proc/stat", b"\n".join(lines))


@pytest.mark.parametrize(
    "btime",
    [
        b"18446744073709551586",  # -30: the clock set back 30 s below the uptime
        b"9223372036854775808",  # 2^63: no signed 64-bit column holds it
        b"1000000000000000",  # 10^15: year 31690, no datetime holds it
        b"253402300800",  # 10000-01-01T00:00:00Z
        b"17954810O9",  # garbage
        b"-5",
    ],
)
def test_a_boot_time_that_is_no_time_records_the_boot_with_it_unknown(
    sysroot: SysrootFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str], btime: bytes
) -> None:
    db = tmp_path / "k.db"
    url = f"sqlite:///{db}"
    step0, step1 = sysroot("kexec1/step0"), sysroot("kexec1/step1")
    set_btime(step1, btime)
    for root in (step0, step1):
        argv = ["--once", "--sysroot", str(root), "--db", url, "--state-dir", str(tmp_path / "st")]
        assert run_main("khod", khod_main.main, argv) == 0
        assert "internal error" not in capsys.readouterr().err

    rc, out, err = ctl(capsys, "history", "--json", "--all", "--db", url)
    assert rc == 0, err
    rows = json.loads(out)
    assert [(r["kind"], r["booted_at"]) for r in rows] == [
        ("kexec", None),
        ("cold", "2026-11-24T00:43:36Z"),
    ], rows
    rc, out, err = ctl(capsys, "history", "--all", "--db", url)
    assert rc == 0 and "kexec" in out, err
    rc, out, err = ctl(capsys, "chain", "--json", "--sysroot", str(step1), "--db", url)
    assert rc == 0, err
    assert [(c["link"], c["booted_at"]) for c in json.loads(out)] == [
        ("start", "2026-11-24T00:43:36Z"),
        ("ok", None),
    ]
    with sqlite3.connect(db) as conn:
        ((message,),) = conn.execute(
            "SELECT e.message FROM events e JOIN boots b ON b.id = e.boot_pk "
            "WHERE e.kind = 'boot-time-unknown' AND b.boot_id = ?",
            (STEP1_BOOT,),
        ).fetchall()
    assert "/proc/stat" in message and "btime" in message, message

    snap = compute_snapshot(open_store(url), MACHINE, STEP1_BOOT, ingested_at=0, duration=0)
    c = SnapshotCollector()
    c.set(snap)
    samples = exposition(make_registry(c)).decode().splitlines()
    assert not [ln for ln in samples if ln.startswith("khod_boot_timestamp_seconds")], samples
    assert "khod_kho_enabled 1.0" in samples  # the rest of the boot is there

    # export and import into another store, retention over it
    rc, _, err = ctl(capsys, "export", "-o", str(tmp_path / "x.jsonl"), "--db", url)
    assert rc == 0, err
    other = f"sqlite:///{tmp_path / 'other.db'}"
    rc, out, err = ctl(capsys, "import", str(tmp_path / "x.jsonl"), "--db", other, "--json")
    assert rc == 0, err
    assert json.loads(out)["new"]["boot"] == 2
    argv = ["--once", "--sysroot", str(step1), "--db", other, "--max-boots", "1"]
    assert run_main("khod", khod_main.main, [*argv, "--state-dir", str(tmp_path / "st2")]) == 0
    rc, out, err = ctl(capsys, "history", "--json", "--all", "--db", other)
    assert rc == 0, err
    assert [r["boot_id"] for r in json.loads(out)] == [STEP1_BOOT]
