"""Disk full: the store and the state directory on a full tmpfs. khod keeps serving
/metrics, says the ingest failed (one line, the store error counter), and records the
boot once space returns."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from khod.cli import khoctl
from khod.cli.common import run_main
from tests import daemon_helpers
from tests.conftest import SysrootFactory, mounted_tmpfs

pytestmark = pytest.mark.slow


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    yield from mounted_tmpfs(tmp_path, "1m")


@pytest.fixture
def store_fs(tmp_path: Path) -> Iterator[Path]:
    """Room for a few boots (blobs and pstore records), then full."""
    yield from mounted_tmpfs(tmp_path, "8m")


def fill(mnt: Path) -> Path:
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def metric(text: str, line_start: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_disk_full_then_space_returns(
    sysroot: SysrootFactory, tmp_path: Path, small_fs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    filler = fill(small_fs)
    conf = tmp_path / "khod.toml"
    conf.write_text('[daemon]\nretry_interval = "1s"\n')
    db = small_fs / "khod.db"
    with daemon_helpers.running_daemon(
        sysroot("pstore-kho/step1"),
        tmp_path,
        "--config", str(conf), "--db", f"sqlite:///{db}", "--state-dir", str(small_fs / "state"),
    ) as d:  # fmt: skip
        d.wait_for("READY=1")
        deadline = time.monotonic() + 30
        while (metric(d.scrape(), 'khod_source_errors_total{source="store"}') or 0) < 3:
            assert time.monotonic() < deadline, d.scrape()
            time.sleep(0.2)
        failing = d.scrape()  # served all along, the failures counted
        assert metric(failing, "khod_kexecs_since_cold_boot") is None  # nothing recorded yet
        filler.unlink()  # space returns
        while metric(d.scrape(), "khod_kexecs_since_cold_boot") != 1.0:
            assert time.monotonic() < deadline + 30, d.scrape()
            time.sleep(0.2)
        d.proc.terminate()
        d.proc.wait(10)
        log = d.proc.stdout.read() if d.proc.stdout else ""
    assert "ingest failed; retrying in 1s" in log
    assert "database or disk is full" in log or "No space left on device" in log, log
    assert "recorded boot f3d7c587" in log
    assert "Traceback" not in log
    with capsys.disabled():
        errors = metric(failing, 'khod_source_errors_total{source="store"}')
        print(
            f"\ndisk full: {errors:.0f} failed ingests while full, /metrics served; "
            "the boot recorded once space returned"
        )


def _once(root: Path, db: Path, state: Path) -> tuple[int, str]:
    """The installed khod --once, in a process of its own as a unit runs it: its
    exit status and what it printed (stderr, then stdout)."""
    argv = ["--once", "--sysroot", str(root), "--db", f"sqlite:///{db}", "--state-dir", str(state)]
    r = subprocess.run(
        [str(daemon_helpers.BIN / "khod"), *argv], capture_output=True, text=True, check=False
    )
    return r.returncode, r.stderr + r.stdout


def _khoctl_json(db: Path, root: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    argv = (*argv, "--json", "--sysroot", str(root), "--db", f"sqlite:///{db}")
    assert run_main("khoctl", khoctl.main, argv) == 0
    return json.loads(capsys.readouterr().out)


def test_a_full_disk_is_not_damage_the_store_stays_and_takes_the_boot_later(
    sysroot: SysrootFactory, store_fs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store and the state directory on a filesystem that fills up: khod --once
    fails in one line and moves nothing aside; with space back, the same boot lands in
    the same store, after the boots it already held, and the chain follows on."""
    small_fs = store_fs
    db, state = small_fs / "khod.db", small_fs / "state"
    for step in ("pstore-kho/step0", "pstore-kho/step1"):
        rc, err = _once(sysroot(step), db, state)
        assert rc == 0, err
    with closing(sqlite3.connect(db)) as conn:  # closed: no -shm held open for khod
        before = sorted(conn.execute("SELECT boot_id, kind FROM boots"))
        dedupe = sorted(conn.execute("SELECT sha256 FROM pstore_records"))
    assert len(before) == 2 and dedupe
    filler = fill(small_fs)
    step2 = sysroot("pstore-kho/step2")
    rc, err = _once(step2, db, state)
    assert rc == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("khod: error: "), err
    assert "damaged" not in err and "moved aside" not in err, err
    assert sorted(p.name for p in small_fs.iterdir() if "damaged" in p.name) == []
    # the same store, whole, nothing lost (read as it lies: no -shm fits on a full disk)
    with closing(sqlite3.connect(f"file:{db}?immutable=1", uri=True)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert sorted(conn.execute("SELECT boot_id, kind FROM boots")) == before
        assert sorted(conn.execute("SELECT sha256 FROM pstore_records")) == dedupe
    filler.unlink()  # space returns: the next run records the boot
    rc, err = _once(step2, db, state)
    assert rc == 0 and "recorded boot 76d14fe6" in err, err
    assert "damaged" not in err
    history = _khoctl_json(db, step2, capsys, "history")
    assert [b["boot_id"][:8] for b in history] == ["76d14fe6", "f3d7c587", "3c7d9ef3"]
    chain = _khoctl_json(db, step2, capsys, "chain")
    assert [b["link"] for b in chain] == ["start", "ok", "ok"]
