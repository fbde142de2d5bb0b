"""Concurrency: while the daemon ingests again and again (SIGHUP), khoctl queries and
second khod instances use the same store: nobody sees "database is locked", every
command succeeds, and no row is doubled."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import daemon_helpers
from tests.conftest import SysrootFactory

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SECONDS = 15.0


def test_queries_and_a_second_khod_while_the_daemon_ingests(
    sysroot: SysrootFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = sysroot("pstore-kho/step1")
    others = [sysroot(s) for s in ("pstore-kho/step2", "pstore-kho/step3", "kexec1/step1")]
    with daemon_helpers.running_daemon(main, tmp_path) as d:
        d.wait_for("READY=1")
        db = d.db
        results: list[tuple[str, int, str]] = []
        lock = threading.Lock()
        stop = time.monotonic() + SECONDS

        def loop(argv: list[str]) -> None:
            while time.monotonic() < stop:
                r = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
                with lock:
                    results.append((argv[1], r.returncode, r.stdout[-200:] + r.stderr))

        workers = [
            [str(BIN / "khoctl"), "history", "--json", "--all", "--db", db],
            [str(BIN / "khoctl"), "status", "--json", "--sysroot", str(main), "--db", db],
            [str(BIN / "khoctl"), "chain", "--json", "--sysroot", str(main), "--db", db],
            *(
                [
                    str(BIN / "khod"),
                    "--once",
                    "--sysroot",
                    str(root),
                    "--db",
                    db,
                    "--state-dir",
                    str(tmp_path / f"s{i}"),
                ]
                for i, root in enumerate(others)
            ),
        ]

        done = threading.Event()

        def drain() -> None:  # as systemd does: a full notify socket would block khod
            d.notify.settimeout(0.2)
            while not done.is_set():
                try:
                    d.messages.append(d.notify.recv(4096).decode())
                except TimeoutError:
                    continue

        drainer = threading.Thread(target=drain)
        drainer.start()
        threads = [threading.Thread(target=loop, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        hups = 0
        while time.monotonic() < stop:  # the daemon ingests again at every SIGHUP
            d.proc.send_signal(signal.SIGHUP)
            hups += 1
            time.sleep(0.5)
        for t in threads:
            t.join()
        alive = d.proc.poll() is None
        d.proc.terminate()
        d.proc.wait(10)
        done.set()
        drainer.join()
        log = d.proc.stdout.read() if d.proc.stdout else ""
        assert alive, log[-3000:]
    failures = [r for r in results if r[1] != 0]
    locked = [r for r in results if "locked" in r[2]] + (["daemon"] if "locked" in log else [])
    assert failures == [] and locked == [], (failures[:3], locked[:3])
    path = db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        boots = conn.execute("SELECT boot_id, count(*) FROM boots GROUP BY boot_id").fetchall()
        pstore = conn.execute(
            "SELECT count(*), count(DISTINCT sha256) FROM pstore_records"
        ).fetchone()
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert len(boots) == 4 and all(n == 1 for _, n in boots)
    assert pstore[0] == pstore[1]
    with capsys.disabled():
        kinds = {k: sum(1 for r in results if r[0] == k) for k in ("history", "status", "chain")}
        print(
            f"\nconcurrency: {SECONDS:.0f} s, {hups} daemon ingests (SIGHUP), "
            f"{sum(1 for r in results if r[0] == '--once')} khod --once, khoctl {kinds}: "
            "0 failures, 0 'database is locked', each boot once"
        )
