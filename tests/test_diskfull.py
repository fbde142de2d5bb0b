"""Disk full: the store and the state directory on a full tmpfs. khod keeps serving
/metrics, says the ingest failed (one line, the store error counter), and records the
boot once space returns."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import daemon_helpers
from tests.conftest import SysrootFactory

pytestmark = pytest.mark.slow


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "khod-test", str(mnt)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, f"mounting a tmpfs needs root: {r.stderr}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


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
