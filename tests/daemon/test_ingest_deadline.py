"""The daemon's loop never waits on an ingest: a child that hangs (here: the store is a
FIFO nobody writes, so opening it blocks) is watched with a deadline while WATCHDOG=1
and /metrics go on; past ``daemon.ingest_timeout`` it is killed, and that counts as a
store error. The store's full integrity check runs once per start, not per re-ingest."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.conftest import SysrootFactory
from tests.daemon_helpers import BIN, running_daemon
from tests.store.test_diskfull import metric

STORE_ERRORS = 'khod_source_errors_total{source="store"}'


def test_a_hung_ingest_is_killed_at_its_deadline_while_the_daemon_goes_on(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    conf = tmp_path / "khod.toml"
    conf.write_text('[daemon]\ningest_timeout = "3s"\nretry_interval = "1h"\n')
    with running_daemon(
        sysroot("pstore-kho/step2"),
        tmp_path,
        "--config",
        str(conf),
        env={"WATCHDOG_USEC": "400000"},
    ) as d:
        d.wait_for("READY=1")
        before = metric(d.scrape(), STORE_ERRORS) or 0
        db = Path(d.db.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{db}{suffix}").exists():
                os.rename(f"{db}{suffix}", f"{db}.away{suffix}")
        os.mkfifo(db)  # the next ingest blocks opening it
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("RELOADING=1", timeout=10)
        for _ in range(3):  # the loop keeps feeding the watchdog while the child hangs
            d.wait_for("WATCHDOG=1", timeout=5)
        assert "kexec" in d.scrape()  # and /metrics answers
        assert d.messages[-1] == "WATCHDOG=1"  # the reload is not over yet
        d.wait_for("READY=1", timeout=60)  # the child was stopped: the reload ends
        after = metric(d.scrape(), STORE_ERRORS)
        d.wait_for("WATCHDOG=1", timeout=5)
        assert d.proc.poll() is None
        d.proc.terminate()
        assert d.proc.wait(10) == 0  # the boot was recorded; a later ingest failed
        log = d.proc.stdout.read() if d.proc.stdout else ""
    assert after == before + 1, log
    assert "khod: ingest: no answer in 3s, stopped" in log
    assert "ingest failed; retrying in 3600s" in log
    assert "Traceback" not in log


def test_the_store_is_checked_once_per_start_not_per_reload(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    conf = tmp_path / "khod.toml"
    conf.write_text("")
    db = tmp_path / "khod.db"  # the daemon's store (daemon_helpers), with a boot in it
    once = [str(BIN / "khod"), "--once", "--sysroot", str(sysroot("pstore-kho/step1"))]
    subprocess.run([*once, "--db", f"sqlite:///{db}"], check=True, capture_output=True)
    with running_daemon(sysroot("pstore-kho/step2"), tmp_path, "--config", str(conf)) as d:
        d.wait_for("READY=1")
        for _ in range(2):
            d.proc.send_signal(signal.SIGHUP)
            d.wait_for("RELOADING=1", timeout=10)
            d.wait_for("READY=1", timeout=60)
        d.proc.terminate()
        assert d.proc.wait(10) == 0
        log = d.proc.stdout.read() if d.proc.stdout else ""
    checked = [line for line in log.splitlines() if "integrity checked" in line]
    assert checked == [f"khod: database {db}: integrity checked (quick_check ok)"], log
    assert log.count("configuration reloaded") == 2


def test_a_store_the_first_ingest_never_opened_is_checked_by_the_retry(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    """The check once per start is the first successful ingest's: when the first one
    failed before it checked anything, the retry checks the store whole."""
    import time

    conf = tmp_path / "khod.toml"
    conf.write_text('[daemon]\nretry_interval = "1s"\n')
    db = tmp_path / "khod.db"
    ready = tmp_path / "ready.db"  # a store with a boot in it, put in place later
    once = [str(BIN / "khod"), "--once", "--sysroot", str(sysroot("pstore-kho/step1"))]
    subprocess.run([*once, "--db", f"sqlite:///{ready}"], check=True, capture_output=True)
    db.mkdir()  # the first ingest cannot open this
    with running_daemon(sysroot("pstore-kho/step2"), tmp_path, "--config", str(conf)) as d:
        d.wait_for("READY=1")
        assert metric(d.scrape(), "khod_kexecs_since_cold_boot ") is None
        db.rmdir()
        os.rename(ready, db)
        deadline = time.monotonic() + 60
        while metric(d.scrape(), "khod_kexecs_since_cold_boot ") is None:
            assert time.monotonic() < deadline, d.messages
            time.sleep(0.2)
        d.proc.terminate()
        d.proc.wait(10)
        log = d.proc.stdout.read() if d.proc.stdout else ""
    assert "ingest failed; retrying in 1s" in log
    checked = [line for line in log.splitlines() if "integrity checked" in line]
    assert checked == [f"khod: database {db}: integrity checked (quick_check ok)"], log
