"""khod --once without the right to read debugfs or pstore (a user, or root without
CAP_DAC_OVERRIDE): the boot is recorded from what it can read, the kernel log's
``KHO: exec from`` line included, and what it could not read is one event per source.

A real fixture is copied to a directory outside pytest's tmp dir (0700 root) so the
unprivileged khod can reach it; the run goes through setpriv, as tests/pgserver.py does."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from khod.ingest.snapshot import compute_snapshot
from khod.store.db import open_store
from tests.conftest import FIXTURES

BIN = Path(sys.executable).parent
MACHINE = "65f7426a2b95da889897ce107b775321"
BOOT = "30341bb4-f2be-44ce-9dc1-bc1efbab050a"  # kexec1/step1
NOBODY = pwd.getpwnam("nobody")
DROP = "-dac_override,-dac_read_search"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")


AS_NOBODY = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def run_as(setpriv: list[str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", *setpriv, "--", *argv], capture_output=True, text=True, check=False
    )


def khod_once(setpriv: list[str], root: Path, state: Path) -> subprocess.CompletedProcess[str]:
    db = f"sqlite:///{state / 'k.db'}"
    return run_as(
        setpriv,
        str(BIN / "khod"),
        "--once",
        "--sysroot",
        str(root),
        "--db",
        db,
        "--state-dir",
        str(state),
    )


@pytest.fixture
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="khod-unpriv-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def prepare(work: Path, user: pwd.struct_passwd) -> tuple[Path, Path]:
    """kexec1/step1, readable by all but debugfs and pstore (0700 and someone else's, as
    root's own 0700 directories look to another user); a state dir of ``user``'s."""
    root = work / "root"
    shutil.copytree(FIXTURES / "kexec1/step1", root)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    pstore = root / "sys/fs/pstore"
    pstore.mkdir(parents=True)
    (pstore / "dmesg-ramoops-0").write_bytes(b"Panic#1 Part1\n<0>Kernel panic\n")
    for d in (root / "sys/kernel/debug", pstore):
        os.chown(d, NOBODY.pw_uid + 1, NOBODY.pw_gid + 1)  # not nobody's, not root's
        d.chmod(0o700)
    state = work / "state"
    state.mkdir()
    os.chown(state, user.pw_uid, user.pw_gid)
    state.chmod(0o700)
    return root, state


@pytest.mark.parametrize(
    ("setpriv", "user"),
    [
        (AS_NOBODY, NOBODY),
        ([f"--inh-caps={DROP}", f"--bounding-set={DROP}"], pwd.getpwuid(0)),
    ],
    ids=["user-nobody", "root-without-dac-override"],
)
def test_unreadable_debugfs_and_pstore_still_record_the_boot(
    work: Path, setpriv: list[str], user: pwd.struct_passwd
) -> None:
    root, state = prepare(work, user)
    db = state / "k.db"
    r = khod_once(setpriv, root, state)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "khod: info: /sys/kernel/debug: permission denied: KHO state taken from the "
        "kernel command line and log",
        "khod: warning: /sys/fs/pstore: permission denied",
    ]
    with sqlite3.connect(db) as conn:
        boot = conn.execute(
            "SELECT kind, previous_release, kexec_count, kho_enabled FROM boots"
        ).fetchall()
        events = conn.execute("SELECT kind, source, severity FROM events ORDER BY id").fetchall()
    assert boot == [("kexec", "7.3.4-khlab-a", 1, 1)]  # from the log line
    assert events == [
        ("read-error", "/sys/kernel/debug", "info"),
        ("read-error", "/sys/fs/pstore", "warning"),
    ]
    snap = compute_snapshot(open_store(f"sqlite:///{db}"), MACHINE, BOOT, ingested_at=0, duration=0)
    assert snap.source_errors == {"kho": 1, "pstore": 1}


def test_check_without_debugfs_access_is_a_clear_failure(work: Path) -> None:
    root, state = prepare(work, NOBODY)
    r = run_as(
        AS_NOBODY,
        str(BIN / "khoctl"),
        "check",
        "--json",
        "--sysroot",
        str(root),
        "--db",
        f"sqlite:///{state / 'k.db'}",
    )
    assert (r.returncode, r.stderr) == (1, "")
    res = json.loads(r.stdout)
    checks = {c["name"]: c for c in res["checks"]}
    assert checks["kho-enabled"]["detail"] == "KHO is on (told by the kernel command line and log)"
    d = checks["debugfs"]
    assert (res["ok"], d["ok"], d["severity"]) == (False, False, "error")
    assert d["detail"] == (
        "/sys/kernel/debug/kho/out: permission denied; khoctl check reads debugfs: run it as root"
    )


def test_unreadable_kho_files_are_one_info_event(work: Path) -> None:
    """debugfs mounted with mode=755: the directories open, the 0400 files do not."""
    root, state = prepare(work, NOBODY)
    debug = root / "sys/kernel/debug"
    debug.chmod(0o755)
    for f in debug.rglob("*"):
        if f.is_file():
            os.chown(f, NOBODY.pw_uid + 1, NOBODY.pw_gid + 1)
            f.chmod(0o400)
    db = state / "k.db"
    r = khod_once(AS_NOBODY, root, state)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0] == (
        "khod: info: /sys/kernel/debug/kho: permission denied on 5 files (in/fdt, "
        "in/sub_fdts/kexec-metadata, out/sub_fdts/kexec-metadata, ...): KHO state taken "
        "from the kernel command line and log"
    )
    assert len(r.stderr.splitlines()) == 2  # and the pstore warning
    with sqlite3.connect(db) as conn:
        boot = conn.execute("SELECT kind, previous_release, kexec_count FROM boots").fetchall()
    assert boot == [("kexec", "7.3.4-khlab-a", 1)]
    snap = compute_snapshot(open_store(f"sqlite:///{db}"), MACHINE, BOOT, ingested_at=0, duration=0)
    assert snap.source_errors == {"kho": 1, "pstore": 1}


def test_check_with_unreadable_kho_files_says_permission_denied(work: Path) -> None:
    """debugfs mounted with mode=755: ``kho/out`` opens, its 0400 files do not; the
    check says so, rather than that the kernel has no scratch areas."""
    root, state = prepare(work, NOBODY)
    debug = root / "sys/kernel/debug"
    debug.chmod(0o755)
    for f in debug.rglob("*"):
        if f.is_file():
            os.chown(f, NOBODY.pw_uid + 1, NOBODY.pw_gid + 1)
            f.chmod(0o400)
    r = run_as(
        AS_NOBODY,
        str(BIN / "khoctl"),
        "check",
        "--json",
        "--sysroot",
        str(root),
        "--db",
        f"sqlite:///{state / 'k.db'}",
    )
    assert (r.returncode, r.stderr) == (1, "")
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    d = checks["debugfs"]
    assert (d["ok"], d["severity"]) == (False, "error")
    assert "permission denied" in d["detail"] and d["detail"].endswith("run it as root")
    assert "scratch" not in checks
